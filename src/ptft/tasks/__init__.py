"""Fine-tuning LightningModules."""
