"""Turn a composed config into a datamodule, a model and a Trainer, then fit and test.

Shared by ``ptft-train`` (one run per process) and ``ptft-pipeline`` (many runs in one
process). Heavy imports live here, so the entry points stay fast for ``--help``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from ptft.callbacks.final_checkpoint import FinalCheckpoint
from ptft.callbacks.finite_loss import FiniteLoss
from ptft.callbacks.process_group import ProcessGroupCleanup
from ptft.callbacks.run_record import RunRecord
from ptft.distributed import batchnorm_sync, distributed_job, resolve_strategy
from ptft.errors import ConfigError
from ptft.handoff import Pretrained, load_backbone, read_pretrained, with_tokenizer
from ptft.module import BackboneModule
from ptft.nn.backbone import locate

log = logging.getLogger(__name__)

#: model-config keys that are not constructor arguments
RUN_KEYS = ("pretrained", "monitor", "monitor_mode", "compile")

# The data sets live in memory: worker processes would only add start-up time.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # Lightning 2.6 on torch 2.13


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()  # Lightning's product adverts


# Lightning installs a console handler of its own; under Hydra, its records already reach
# the root logger (console and the run's log file), so the extra handler only doubles them.
for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
    logging.getLogger(_name).handlers.clear()
    logging.getLogger(_name).propagate = True
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def plain(cfg: Any) -> Any:
    """A resolved config as plain Python containers (checkpoints stay ``weights_only``)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_model(model_cfg: Mapping[str, Any], pretrained: Pretrained | None = None) -> BackboneModule:
    """Instantiate the model; with ``pretrained`` (read from ``model.pretrained`` when not
    given), take the backbone's architecture and weights from that checkpoint."""
    kwargs = dict(model_cfg)
    pretrained_path = kwargs.get("pretrained")
    compile_backbone = bool(kwargs.get("compile"))
    for key in RUN_KEYS:
        kwargs.pop(key, None)
    cls = locate(kwargs.pop("_target_"))
    if pretrained is None and pretrained_path:
        pretrained = read_pretrained(pretrained_path)
    if pretrained is None:
        model = cls(**kwargs)
    else:
        model = _from_pretrained(cls, kwargs, pretrained)
    if compile_backbone:
        # nn.Module.compile compiles in place: the state dict keeps its keys (no "_orig_mod."),
        # so checkpoints stay loadable by uncompiled models and by the handoff
        model.backbone.compile()
    return model


def _from_pretrained(cls: type[BackboneModule], kwargs: dict[str, Any], pretrained: Pretrained) -> BackboneModule:
    """The model with the checkpoint's backbone architecture and weights."""
    if pretrained.config != kwargs.get("backbone"):
        log.info("backbone architecture from %s: %s (model.backbone is ignored)", pretrained.path, pretrained.config)
    kwargs["backbone"] = pretrained.config
    try:
        model = cls(**kwargs)
    except (ConfigError, ValueError) as err:  # the architecture came from the checkpoint: say so
        raise ConfigError(f"model.pretrained={pretrained.path}: {err}") from err
    load_backbone(model, pretrained)
    return model


def build_datamodule(data_cfg: Mapping[str, Any], supervised: bool) -> L.LightningDataModule:
    """Instantiate the datamodule; unsupervised objectives get training batches without labels."""
    kwargs = dict(data_cfg)
    cls = locate(kwargs.pop("_target_"))
    return cls(**kwargs, with_labels=supervised)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_trainer(cfg: DictConfig, extra_callbacks: list[Callback] = ()) -> L.Trainer:
    """The Trainer of ``cfg.trainer``; a strategy that re-runs the script re-runs it the Hydra way
    (:mod:`ptft.distributed`), and the Trainer's own errors about its arguments become one line."""
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, bool(loggers)) + list(extra_callbacks)
    strategy = resolve_strategy(cfg.trainer.get("strategy", "auto"))
    try:
        return instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, strategy=strategy, **batchnorm_sync(cfg.trainer)
        )
    except (ValueError, MisconfigurationException) as err:
        raise ConfigError(f"trainer: {err}") from err


def metrics_of(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as the config says; returns the final val/test metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file; pass the .ckpt to resume from")
    model_cfg, data_cfg = plain(cfg.model), plain(cfg.data)
    output_dir = Path(cfg.paths.output_dir)
    pretrained = read_pretrained(model_cfg["pretrained"]) if model_cfg.get("pretrained") else None
    if pretrained is not None and pretrained.tokenizer is not None:
        # fine-tuning reads text exactly as the backbone was pretrained on it
        data_cfg = with_tokenizer(data_cfg, pretrained.tokenizer, output_dir, f"model.pretrained={pretrained.path}")
    model = build_model(model_cfg, pretrained)
    datamodule = build_datamodule(data_cfg, supervised=type(model).supervised)
    record = {"data": data_cfg, "model": model_cfg, "seed": cfg.get("seed"), "task_name": cfg.get("task_name")}
    with distributed_job() as job:
        callbacks = [RunRecord(record, output_dir), FinalCheckpoint(), ProcessGroupCleanup(), FiniteLoss()]
        trainer = build_trainer(cfg, callbacks)
        job.append(trainer)
        return fit_and_test(cfg, trainer, model, datamodule)


def fit_and_test(
    cfg: DictConfig, trainer: L.Trainer, model: BackboneModule, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """``trainer.fit`` then ``trainer.test`` of the best checkpoint, as ``cfg.train``/``cfg.test`` say."""
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(metrics_of(trainer))
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("train", True) and not best:
            log.info("no best checkpoint was saved: testing the final weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: v for k, v in metrics_of(trainer).items() if k.startswith("test/")})
    if trainer.is_global_zero:
        log.info("final metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return metrics
