"""Rebuild the module a ptft checkpoint was trained as, for ``ptft-eval`` and ``ptft-generate``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ptft.config.targets import locate
from ptft.errors import ConfigError


def load_run(path: str | Path) -> tuple[L.LightningModule, dict]:
    """The module saved in ``path`` (weights loaded) and the run record written with it,
    plus the checkpoint's tokenizer JSON under ``"tokenizer"`` and its class names under
    ``"labels"`` (None without them)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"ckpt_path={path} is not a loadable PyTorch checkpoint ({type(err).__name__})"
        ) from err
    record, backbone = checkpoint.get("ptft_run"), checkpoint.get("ptft_backbone")
    if (
        not isinstance(record, dict)
        or not isinstance(backbone, dict)
        or "hyper_parameters" not in checkpoint
    ):
        raise ConfigError(
            f"ckpt_path={path} was not written by ptft-train (no run record); it cannot be rebuilt"
        )
    cls = locate(backbone["module"])
    module = cls(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module, {
        **record,
        "tokenizer": checkpoint.get("ptft_tokenizer"),
        "labels": checkpoint.get("ptft_labels"),
    }
