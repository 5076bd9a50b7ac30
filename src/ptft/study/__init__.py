"""The pipeline study: pretrain once, fine-tune every task by method, label fraction and seed;
its tables and plot."""
