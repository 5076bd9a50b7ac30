"""Building and running one training job: data, model and Trainer from a config; DDP
relaunching under Hydra; which process this is."""
