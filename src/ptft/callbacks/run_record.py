"""Write the run's resolved data and model config into every checkpoint, so that
``ptft-eval ckpt_path=…`` can rebuild the run from the checkpoint alone."""

from __future__ import annotations

from typing import Any

import lightning as L


class RunRecord(L.Callback):
    """Adds ``checkpoint["ptft_run"] = {"data": …, "model": …, "seed": …}`` (plain containers)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ptft_run"] = self.record
