"""Rebuild a run from a ptft checkpoint and test it; metrics go to ``metrics.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ptft.errors import ConfigError
from ptft.handoff import with_tokenizer
from ptft.nn.backbone import locate
from ptft.run import build_datamodule, build_loggers, metrics_of, plain

log = logging.getLogger(__name__)


def load_run(path: str | Path) -> tuple[L.LightningModule, dict]:
    """The module saved in ``path`` (weights loaded) and the run record written with it,
    plus the checkpoint's tokenizer JSON under ``"tokenizer"`` (None without one)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"ckpt_path={path} is not a loadable PyTorch checkpoint ({type(err).__name__})") from err
    record, backbone = checkpoint.get("ptft_run"), checkpoint.get("ptft_backbone")
    if not isinstance(record, dict) or not isinstance(backbone, dict) or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} was not written by ptft-train (no run record); it cannot be rebuilt")
    cls = locate(backbone["module"])
    module = cls(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module, {**record, "tokenizer": checkpoint.get("ptft_tokenizer")}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, record = load_run(cfg.ckpt_path)
    tokenizer = record.get("tokenizer")
    data_cfg = plain(cfg.data) if cfg.get("data") else record["data"]
    if tokenizer is not None:  # the run directory the record names may have moved
        data_cfg = with_tokenizer(data_cfg, tokenizer, Path(cfg.paths.output_dir), f"ckpt_path={cfg.ckpt_path}")
    datamodule = build_datamodule(data_cfg, supervised=type(module).supervised)
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg) or False, callbacks=[])
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in metrics_of(trainer).items() if k.startswith("test/")}
    out = Path(cfg.paths.output_dir) / "metrics.json"
    out.write_text(json.dumps({"checkpoint": str(cfg.ckpt_path), "metrics": metrics}, indent=2) + "\n")
    log.info("test metrics: %s (written to %s)", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), out)
    return metrics
