"""Turn a composed config into a datamodule, a model and a Trainer.

Shared by ``ptft-train``, ``ptft-eval`` and ``ptft-pipeline`` (through :mod:`ptft.runs.fit`).
Heavy imports live here, so the entry points stay fast for ``--help``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from ptft.config.targets import locate
from ptft.config.validate import MODEL_RUN_KEYS, SUPPLIED, with_defaults
from ptft.data.protocol import LabelledTrainData
from ptft.errors import ConfigError
from ptft.handoff import Pretrained, load_backbone, read_pretrained, without_lm_head
from ptft.modules.backbone_module import BackboneModule
from ptft.runs.checkpoint_io import AtomicCheckpointIO
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
        pretrained = read_pretrained(pretrained_path, kwargs.get("backbone"))
    if pretrained is None:
        model = cls(**kwargs)
    else:
        model = _from_pretrained(cls, kwargs, pretrained)
    model.inject_lora()  # model.finetune=lora: the adapters go in once the weights are in place
    if compile_backbone:
        # nn.Module.compile compiles in place: the state dict keeps its keys (no "_orig_mod."),
        # so checkpoints stay loadable by uncompiled models and by the handoff
        model.backbone.compile()
    return model


def _from_pretrained(
    cls: type[BackboneModule], kwargs: dict[str, Any], pretrained: Pretrained
) -> BackboneModule:
    """The model with the checkpoint's backbone architecture and weights."""
    data_shape = list(kwargs.get("input_shape") or [])
    if len(pretrained.input_shape) != len(data_shape):  # a text backbone and images, or back
        raise ConfigError(
            f"model.pretrained={pretrained.path} holds a backbone pretrained on "
            f"{_input_kind(pretrained.input_shape)}, but this run's data are "
            f"{_input_kind(data_shape)}: a backbone reads only the kind of input it was "
            "pretrained on; fine-tune it on data of that kind, or pretrain on this data first "
            "(images: experiment=digits_simclr; text: experiment=pydoc_gpt)"
        )
    from ptft.modules.language_model import LanguageModel

    if not issubclass(cls, LanguageModel):  # a task that scores no tokens needs no LM head
        pretrained = without_lm_head(pretrained)
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


def _input_kind(shape: list[int]) -> str:
    kinds = {1: "token sequences", 3: "images"}
    return f"{kinds.get(len(shape), 'inputs')} (input_shape {list(shape)})"


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
    (:mod:`ptft.runs.distributed`), checkpoints are written atomically
    (:class:`~ptft.runs.checkpoint_io.AtomicCheckpointIO`, unless ``trainer.plugins`` brings a
    checkpoint IO of its own), and the Trainer's own errors about its arguments become one
    line."""
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, bool(loggers)) + list(extra_callbacks)
    strategy = resolve_strategy(cfg.trainer.get("strategy", "auto"), cfg.trainer)
    extra = batchnorm_sync(cfg.trainer)
    plugins = trainer_plugins(cfg.trainer.get("plugins")) + list(extra.pop("plugins", []))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    try:
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            strategy=strategy,
            plugins=plugins,
            **extra,
        )
    except (ValueError, TypeError, MisconfigurationException, InstantiationException) as err:
        # Hydra wraps the Trainer's own error ("Error in call to target ..."): say that one
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        raise ConfigError(f"trainer: {' '.join(str(cause).split())}") from err


def trainer_plugins(configured: Any) -> list[Any]:
    """``trainer.plugins`` as a list of plugins (a plugin's name, or a node with a ``_target_``)."""
    if configured is None:
        return []
    built = instantiate(configured)
    if isinstance(built, (list, tuple)) or OmegaConf.is_list(built):
        return list(built)
    return [built]
