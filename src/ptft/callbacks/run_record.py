"""Write what a run needs to be rebuilt into every checkpoint, so ``ptft-eval ckpt_path=…``
and the handoff work from the checkpoint alone: the resolved data and model config, and,
when the data has them, the tokenizer (also saved as ``tokenizer.json`` in the run
directory, with the ``tokenizer_config.json`` and ``special_tokens_map.json`` of an imported
tokenizer beside it; the roles also travel in the backbone's config), the data's manifest
(``data_manifest.json``) and the class names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L

from ptft.data import protocol
from ptft.data.tokenizer import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

#: the data's manifest (corpus version, hashes, split sizes), written in the run directory
MANIFEST_FILE = "data_manifest.json"


class RunRecord(L.Callback):
    """Adds ``ptft_run`` (plain containers), ``ptft_tokenizer`` (tokenizer JSON),
    ``ptft_data_manifest`` and ``ptft_labels`` (class names in index order) to every checkpoint."""

    def __init__(self, record: dict[str, Any], output_dir: str | Path | None = None) -> None:
        self.record = record
        self.output_dir = Path(output_dir) if output_dir else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.output_dir is None or not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = protocol.tokenizer_path(trainer.datamodule)
        if path and path.resolve() != (self.output_dir / TOKENIZER_FILE).resolve():
            shutil.copyfile(path, self.output_dir / TOKENIZER_FILE)
            # an imported tokenizer's roles (and what transformers reads) go with it
            for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
                if (path.parent / name).is_file():
                    shutil.copyfile(path.parent / name, self.output_dir / name)
        manifest = protocol.manifest(trainer.datamodule)
        if manifest:  # which corpus, Python version and content hash the run read
            (self.output_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["ptft_run"] = self.record
        datamodule = trainer.datamodule
        path = protocol.tokenizer_path(datamodule)
        if path:  # a fine-tune must encode text exactly as this run did
            checkpoint["ptft_tokenizer"] = path.read_text()
        manifest = protocol.manifest(datamodule)
        if manifest:
            checkpoint["ptft_data_manifest"] = manifest
        names = protocol.label_names(datamodule)
        if names:
            checkpoint["ptft_labels"] = names
