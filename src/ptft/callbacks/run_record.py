"""Write what a run needs to be rebuilt into every checkpoint, so ``ptft-eval ckpt_path=…``
and the handoff work from the checkpoint alone: the resolved data and model config, and,
when the data has them, the tokenizer (also saved as ``tokenizer.json`` in the run
directory) and the class names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L

from ptft.data.tokenizer import TOKENIZER_FILE


def _datamodule(trainer: L.Trainer) -> Any:
    return getattr(trainer, "datamodule", None)


class RunRecord(L.Callback):
    """Adds ``ptft_run`` (plain containers), ``ptft_tokenizer`` (tokenizer JSON) and
    ``ptft_labels`` (class names in index order) to every checkpoint."""

    def __init__(self, record: dict[str, Any], output_dir: str | Path | None = None) -> None:
        self.record = record
        self.output_dir = Path(output_dir) if output_dir else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = getattr(_datamodule(trainer), "tokenizer_path", None)
        if path and self.output_dir is not None and trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            target = self.output_dir / TOKENIZER_FILE
            if Path(path).resolve() != target.resolve():
                shutil.copyfile(path, target)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["ptft_run"] = self.record
        datamodule = _datamodule(trainer)
        path = getattr(datamodule, "tokenizer_path", None)
        if path:  # a fine-tune must encode text exactly as this run did
            checkpoint["ptft_tokenizer"] = Path(path).read_text()
        names = getattr(datamodule, "label_names", None)
        if names:
            checkpoint["ptft_labels"] = list(names)
