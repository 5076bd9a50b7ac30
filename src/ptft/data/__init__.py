"""LightningDataModules, embedded data sets and batched augmentations."""
