"""What tests share: quiet run settings, composing ``train.yaml`` in-process, running a console
script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from tokenizers import Tokenizer

from ptft.cli import config_dir
from ptft.data.tokenizer import TOKENIZER_FILE

#: quiet, fast settings for runs made by tests
QUIET = [
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
]


def compose_train(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose ``train.yaml`` as ptft-train would, writing under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name=config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"]
        )


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m ptft.<command> …`` in ``cwd``; output is captured as text."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write ``directory/tokenizer.json`` (as a pretraining run leaves it) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


#: a tiny language model on short blocks of the docstring data: in-process fits take seconds
TINY_TEXT_MODEL = [
    "data.vocab_size=512",
    "data.block_size=32",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "model.backbone.dim=32",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.dropout=0.0",
]
