"""The LightningModule bases that objectives and tasks build on: a backbone with its optimizer
setup and handoff record; a language model with a tied output layer."""
