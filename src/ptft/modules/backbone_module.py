"""What every objective and task shares, and nothing more: a backbone built from its
config, the optimizer and scheduler completed from partial configs (with the parameter
groups and learning-rate rules of :mod:`ptft.optim`), and the backbone record written into
every checkpoint for the handoff.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch

from ptft.errors import ConfigError
from ptft.monitors.flops import token_count
from ptft.nn.backbone import Backbone, build_backbone
from ptft.optim import LRScaling, ScaledLR, param_groups, scaled_lr, with_gradual_warmup

log = logging.getLogger(__name__)


def instantiate_partial(config: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Call a ``_target_`` config (``_partial_`` or not) with extra arguments.

    Keys set to ``None`` are left out, so the callee's own default applies (the optimizer
    schema lists ``momentum`` and ``betas``; AdamW takes no momentum, SGD no betas).
    """
    from hydra.utils import instantiate

    config = {k: v for k, v in config.items() if k != "_partial_" and v is not None}
    return instantiate(config, *args, **kwargs)


class BackboneModule(L.LightningModule):
    """A LightningModule whose features come from ``self.backbone``.

    The learning-rate rules are attributes a subclass sets from its own config keys
    (``configure_lr``): the constructor's signature stays the one every objective shares.
    """

    #: whether the model learns from labels (a task): it trains on the labelled subset of the
    #: data (``data.label_fraction``); a pretraining objective reads every training example
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        lr = optimizer.get("lr")
        # configure_optimizers reads the base rate itself (layer-wise rates, scaling): a bad one
        # would fail only when the fit starts, in torch's words
        if not (isinstance(lr, int | float) and not isinstance(lr, bool) and lr >= 0):
            raise ConfigError(
                f"model.optimizer.lr={'null' if lr is None else lr}: the learning rate must be a "
                "number >= 0; give e.g. model.optimizer.lr=1e-3"
            )
        self.backbone_config = dict(backbone)
        self.input_shape = tuple(input_shape)
        self.optimizer_config = dict(optimizer)
        self.scheduler_config = dict(scheduler) if scheduler else None
        self.backbone: Backbone = build_backbone(self.backbone_config, self.input_shape)
        #: rate of a backbone layer group = rate of the group above / this (None: one rate)
        self.discriminative_lr: float | None = None
        #: Goyal et al.'s linear scaling rule (None: the configured rate as it is)
        self.lr_scaling: LRScaling | None = None
        #: whether frozen parameters go into the optimizer too (to be unfrozen later)
        self.optimize_frozen = False
        #: the effective learning-rate values of this fit, logged when training starts
        self.lr_report: dict[str, float] = {}
        #: ``model.finetune=lora``: the adapters' settings until they go in, then None
        #: (:meth:`configure_lora`, :meth:`inject_lora`)
        self.pending_lora: dict[str, Any] | None = None

    def configure_lr(
        self, discriminative_lr: float | None = None, lr_scaling: Mapping[str, Any] | None = None
    ) -> None:
        """Set the learning-rate rules from ``model.discriminative_lr`` and ``model.lr_scaling``."""
        if discriminative_lr is not None and discriminative_lr <= 0:
            raise ConfigError(
                f"model.discriminative_lr={discriminative_lr}: give a factor > 0 "
                "(ULMFiT: 2.6), or null for one rate everywhere"
            )
        self.discriminative_lr = discriminative_lr
        self.lr_scaling = LRScaling.from_config(lr_scaling)

    def configure_lora(self, lora: Mapping[str, Any] | None) -> None:
        """``model.finetune=lora`` (:mod:`ptft.interop.lora`): check the settings against the
        backbone now (peft installed, the keys, targets that match Linear layers: one line each),
        freeze the backbone, and leave the adapters to :meth:`inject_lora`.

        The adapters go in later, not here: the handoff (``model.pretrained=``) loads the
        pretrained weights into the module once it is built, into the backbone's plain layers,
        whose weights the adapters would rename (``…qkv.base_layer.weight``). They go in once
        the module is complete: ``runs.build.build_model`` puts them in after the handoff;
        loading a state that holds adapters puts them in first (:meth:`load_state_dict`); a
        module built in Python gets them when Lightning configures it (:meth:`configure_model`,
        before the optimizer, a resumed state and DDP's wrapping) or from :meth:`inject_lora`."""
        from ptft.interop.lora import check_lora

        check_lora(self.backbone, lora)
        self.backbone.requires_grad_(False)
        self.pending_lora = dict(lora or {})

    def inject_lora(self) -> None:
        """Put the pending LoRA adapters into the backbone (once; nothing when none pend)."""
        if self.pending_lora is None:
            return
        from ptft.interop.lora import apply_lora

        config, self.pending_lora = self.pending_lora, None
        adapters = apply_lora(self.backbone, config)
        if self._trainer is None or self.trainer.is_global_zero:
            params = list(self.parameters())
            trainable = sum(p.numel() for p in params if p.requires_grad)
            total = sum(p.numel() for p in params)
            log.info(
                "LoRA: %d adapter parameters in the backbone; %d of %d parameters train (%.2f%%)",
                adapters,
                trainable,
                total,
                100.0 * trainable / max(total, 1),
            )

    def configure_model(self) -> None:
        # Lightning's hook for making layers, before the optimizer, a resumed state and DDP
        self.inject_lora()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        # a LoRA run's state holds its adapters (ptft-eval's rebuild, the weights ddp_spawn
        # hands back to the main process): they go in first; a merged state has plain layers
        if self.pending_lora is not None:
            from ptft.interop.lora import is_adapter_key

            if any(is_adapter_key(k) for k in state_dict):
                self.inject_lora()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def train_labels(self) -> bool:
        """Whether training batches must carry labels: a task's always, a pretraining
        objective's never (one with an online probe says otherwise, see
        :class:`ptft.monitors.features.MonitoredObjective`). The run builds the datamodule
        to serve them (:func:`ptft.runs.build.build_datamodule`)."""
        return self.supervised

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def extra_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups a subclass manages itself (``{"params": [...], "lr": …}``).

        They are appended as given (no scaling, no layer-wise rate, their own weight decay)
        and their parameters are left out of the regular groups; the schedule applies to
        them too. None by default.
        """
        return []

    def configure_optimizers(self) -> Any:
        extra = [{**group, "params": list(group["params"])} for group in self.extra_param_groups()]
        taken = [p for group in extra for p in group["params"]]
        base_lr = float(self.optimizer_config["lr"])
        scaled = (
            scaled_lr(self.lr_scaling, self.trainer, base_lr) if self.lr_scaling else ScaledLR()
        )
        self.lr_report = scaled.report
        lr = base_lr * scaled.scale
        groups = param_groups(self, lr, self.discriminative_lr, self.optimize_frozen, exclude=taken)
        optimizer = instantiate_partial(self.optimizer_config, groups + extra)
        scheduler = None
        if self.scheduler_config:
            scheduler = instantiate_partial(
                self.scheduler_config,
                optimizer,
                total_steps=int(self.trainer.estimated_stepping_batches),
            )
        if scaled.warmup_steps:
            scheduler = with_gradual_warmup(
                optimizer, scheduler, scaled.warmup_steps, scaled.start_factor
            )
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_start(self) -> None:
        # the effective values reach the loggers (TensorBoard) once per fit
        if self.lr_report:
            self.log_dict(self.lr_report, on_step=False, on_epoch=True, rank_zero_only=True)

    def training_flops(self, batch: Any) -> float | None:
        """FLOPs (forward + backward) of one training step on ``batch``, counted analytically, for
        MFU; None (the default) has :mod:`ptft.monitors.flops` measure them on a meta-device copy
        instead."""
        return None

    def training_tokens(self, batch: Any) -> int | None:
        """Tokens the model reads in a training batch, for tokens/s; None for batches of images."""
        return token_count(batch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The handoff rebuilds the backbone from this record: no need to repeat its config.
        checkpoint["ptft_backbone"] = {
            "config": dict(self.backbone_config),
            "input_shape": list(self.input_shape),
            "module": f"{type(self).__module__}.{type(self).__qualname__}",
        }
