"""Image classification: backbone + linear head, trained with cross-entropy.

``finetune="full"`` trains everything; ``finetune="linear_probe"`` freezes the backbone
(weights and batch-norm statistics) and trains only the head; ``finetune="gradual_unfreeze"``
(Howard & Ruder 2018) starts like the linear probe and unfreezes one backbone layer group
per ``unfreeze_epochs`` epochs, from the top down, when an epoch starts
(:func:`ptft.optim.unfreeze_top`); ``finetune="lora"`` (Hu et al. 2021) freezes the backbone
and trains low-rank adapters in it (``lora``: :class:`ptft.interop.lora.LoRAConfig`) and the
head.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ptft.config.bounds import PositiveFloat, PositiveInt, Probability, check_arguments
from ptft.data.augment import Augment, AugmentConfig
from ptft.errors import ConfigError
from ptft.interop.lora import LoRAConfig
from ptft.modules.backbone_module import BackboneModule
from ptft.optim import LRScalingConfig, frozen_groups, layer_groups_of, unfreeze_stage, unfreeze_top

log = logging.getLogger(__name__)

FinetuneMode = Literal["full", "linear_probe", "gradual_unfreeze", "lora"]
FINETUNE_MODES: tuple[str, ...] = typing.get_args(FinetuneMode)


class Classifier(BackboneModule):
    """Cross-entropy classifier over ``num_classes`` on top of ``backbone`` features."""

    supervised = True

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        finetune: FinetuneMode = "full",
        augment: AugmentConfig | None = None,
        head_dropout: Probability = 0.0,
        label_smoothing: Probability = 0.0,
        unfreeze_epochs: PositiveInt = 1,
        discriminative_lr: PositiveFloat | None = None,
        lr_scaling: LRScalingConfig | None = None,
        lora: LoRAConfig | None = None,
    ) -> None:
        if finetune not in FINETUNE_MODES:
            raise ConfigError(f"model.finetune='{finetune}' is not one of {list(FINETUNE_MODES)}")
        if unfreeze_epochs < 1:
            raise ConfigError(
                f"model.unfreeze_epochs={unfreeze_epochs}: give at least 1 epoch per stage"
            )
        check_arguments(Classifier.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.configure_lr(discriminative_lr, lr_scaling)
        self.finetune = finetune
        self.unfreeze_epochs = unfreeze_epochs
        self.label_smoothing = label_smoothing
        self.head = nn.Sequential(
            nn.Dropout(head_dropout), nn.Linear(self.backbone.out_dim, num_classes)
        )
        self.augment = Augment(**augment) if augment is not None else None
        if finetune == "gradual_unfreeze":
            layer_groups_of(
                self.backbone, "model.finetune=gradual_unfreeze"
            )  # fail now, not at epoch 1
            # frozen parameters go into the optimizer from the start: without gradients
            # they are skipped, and unfreezing them later needs no new optimizer
            self.optimize_frozen = True
        if finetune != "full":
            self.backbone.requires_grad_(False)
            # Lightning keeps the modes modules have (it no longer calls .train() at fit
            # start), so the frozen backbone is put in eval mode here, and kept there by train()
            self.train()
        if finetune == "lora":
            # the backbone stays frozen; its adapters go in after the handoff (inject_lora)
            self.configure_lora(lora)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    @property
    def frozen(self) -> bool:
        """Whether the whole backbone stays frozen (the linear probe)."""
        return self.finetune == "linear_probe"

    def setup(self, stage: str) -> None:
        # DDP only synchronises the parameters that are trainable when it wraps the model:
        # groups unfrozen later would drift apart on every device without an error
        if self.finetune == "gradual_unfreeze" and stage == "fit" and self.trainer.world_size > 1:
            raise ConfigError(
                "model.finetune=gradual_unfreeze trains on one device (DDP does not synchronise "
                "parameters unfrozen during the run); set trainer.devices=1 and trainer.num_nodes=1"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        # a run resumed mid-epoch (ckpt_path=) does not start that epoch again: its layer groups
        # are unfrozen here as well
        self.on_train_epoch_start()

    def on_train_epoch_start(self) -> None:
        # gradual unfreezing: at the start of epoch e the top e // unfreeze_epochs groups train
        if self.finetune != "gradual_unfreeze":
            return
        groups = self.backbone.layer_groups()
        epoch = self.trainer.current_epoch
        count = min(unfreeze_stage(epoch, self.unfreeze_epochs), len(groups))
        if self.trainer.is_global_zero and len(frozen_groups(groups)) != len(groups) - count:
            log.info(
                "gradual unfreezing: epoch %d trains the head and the top %d of %d layer groups",
                epoch,
                count,
                len(groups),
            )
        unfreeze_top(groups, count, self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        # a frozen backbone (or layer group) keeps its batch-norm statistics too
        if self.frozen:
            self.backbone.eval()
        elif self.finetune == "gradual_unfreeze":
            for group in frozen_groups(self.backbone.layer_groups()):
                group.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """One feature vector per example, ``(B, out_dim)``: what the head reads."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.features(x)
        return self.head(features)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())
        return loss

    def _evaluate(
        self, batch: Sequence[torch.Tensor], stage: str, metrics: MetricCollection
    ) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.log(
            f"{stage}/loss",
            F.cross_entropy(logits.float(), y),
            prog_bar=stage == "val",
            sync_dist=True,
        )
        metrics.update(logits, y)
        self.log_dict(metrics, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        # the logits go to on_test_batch_end: ptft-eval saves the predictions from them
        return self._evaluate(batch, "test", self.test_metrics)
