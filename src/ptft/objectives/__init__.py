"""Pretraining objectives (LightningModules) and their pure loss functions."""
