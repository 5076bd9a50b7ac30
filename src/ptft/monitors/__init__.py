"""What watches a run without taking part in it: kNN and linear-probe monitors of features,
image grids, FLOP counts for MFU."""
