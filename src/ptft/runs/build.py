"""Turn a composed config into a datamodule, a model and a Trainer.

Shared by ``ptft-train``, ``ptft-eval`` and ``ptft-pipeline`` (through :mod:`ptft.runs.fit`).
Heavy imports live here, so the entry points stay fast for ``--help``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from ptft.config.targets import locate
from ptft.config.validate import MODEL_RUN_KEYS, SUPPLIED, with_defaults
from ptft.data.protocol import LabelledTrainData
from ptft.errors import ConfigError
from ptft.handoff import Pretrained, load_backbone, read_pretrained
from ptft.modules.backbone_module import BackboneModule
from ptft.runs.distributed import batchnorm_sync, resolve_strategy

log = logging.getLogger(__name__)


def plain(cfg: Any) -> Any:
    """A resolved config as plain Python containers (checkpoints stay ``weights_only``)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_model(
    model_cfg: Mapping[str, Any], pretrained: Pretrained | None = None
) -> BackboneModule:
    """Instantiate the model; with ``pretrained`` (read from ``model.pretrained`` when not
    given), take the backbone's architecture and weights from that checkpoint."""
    kwargs = dict(model_cfg)
    pretrained_path = kwargs.get("pretrained")
    compile_backbone = bool(kwargs.get("compile"))
    for key in MODEL_RUN_KEYS:
        kwargs.pop(key, None)
    cls = locate(kwargs.pop("_target_"))
    if isinstance(kwargs.get("backbone"), Mapping) and "_target_" in kwargs["backbone"]:
        # the whole architecture, defaults included, goes into the checkpoint (hyperparameters
        # and the handoff's record), so that it rebuilds the same whatever later code defaults to
        kwargs["backbone"] = with_defaults(kwargs["backbone"], SUPPLIED["model.backbone"])
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


def _from_pretrained(
    cls: type[BackboneModule], kwargs: dict[str, Any], pretrained: Pretrained
) -> BackboneModule:
    """The model with the checkpoint's backbone architecture and weights."""
    if pretrained.config != kwargs.get("backbone"):
        log.info(
            "backbone architecture from %s: %s (model.backbone is ignored)",
            pretrained.path,
            pretrained.config,
        )
    kwargs["backbone"] = pretrained.config
    try:
        model = cls(**kwargs)
    except (ConfigError, ValueError) as err:  # the architecture came from the checkpoint: say so
        raise ConfigError(f"model.pretrained={pretrained.path}: {err}") from err
    load_backbone(model, pretrained)
    return model


def build_datamodule(
    data_cfg: Mapping[str, Any], supervised: bool, train_labels: bool | None = None
) -> L.LightningDataModule:
    """Instantiate the datamodule for a model that is ``supervised`` and whose training batches
    carry labels when ``train_labels`` (default: ``supervised``): what the model declares
    (``BackboneModule.supervised``, ``.train_labels``), the data serves
    (:mod:`ptft.data.protocol`). A pretraining objective's batches come without labels, unless
    its online probe asks for them: then the data must label every training example."""
    kwargs = dict(data_cfg)
    cls = locate(kwargs.pop("_target_"))
    if train_labels and not supervised:
        if not (isinstance(cls, type) and issubclass(cls, LabelledTrainData)):
            raise ConfigError(
                "model.online_probe needs labelled image data to monitor with "
                "(data=digits, mnist, cifar10); set model.online_probe.enabled=false"
            )
        kwargs["monitor_labels"] = True
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
    (:mod:`ptft.runs.distributed`), and the Trainer's own errors about its arguments become one
    line."""
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, bool(loggers)) + list(extra_callbacks)
    strategy = resolve_strategy(cfg.trainer.get("strategy", "auto"))
    try:
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            strategy=strategy,
            **batchnorm_sync(cfg.trainer),
        )
    except (ValueError, MisconfigurationException) as err:
        raise ConfigError(f"trainer: {err}") from err
