"""Image classification: backbone + linear head, trained with cross-entropy.

``finetune="full"`` trains everything; ``finetune="linear_probe"`` freezes the backbone
(weights and batch-norm statistics) and trains only the head; ``finetune="gradual_unfreeze"``
(Howard & Ruder 2018) starts like the linear probe and unfreezes the backbone's layer groups
one at a time, from the top down, evenly over the first ``unfreeze_fraction`` of the run's
optimizer steps (or, with ``unfreeze_schedule="epochs"``, one per ``unfreeze_epochs`` epochs;
:func:`ptft.optim.unfreeze_count`, :func:`ptft.optim.unfreeze_top`); ``finetune="lora"``
(Hu et al. 2021) freezes the backbone and trains low-rank adapters in it (``lora``:
:class:`ptft.interop.lora.LoRAConfig`) and the head.
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ptft.config.bounds import (
    Fraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    check_arguments,
)
from ptft.data.augment import Augment, AugmentConfig
from ptft.errors import ConfigError
from ptft.interop.lora import LoRAConfig
from ptft.modules.backbone_module import BackboneModule
from ptft.optim import (
    LRScalingConfig,
    frozen_groups,
    layer_groups_of,
    unfreeze_count,
    unfreeze_stage,
    unfreeze_top,
)

log = logging.getLogger(__name__)

FinetuneMode = Literal["full", "linear_probe", "gradual_unfreeze", "lora"]
FINETUNE_MODES: tuple[str, ...] = typing.get_args(FinetuneMode)
UnfreezeSchedule = Literal["steps", "epochs"]
UNFREEZE_SCHEDULES: tuple[str, ...] = typing.get_args(UnfreezeSchedule)


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
        unfreeze_epochs: PositiveInt | None = None,
        discriminative_lr: PositiveFloat | None = None,
        lr_scaling: LRScalingConfig | None = None,
        lora: LoRAConfig | None = None,
        unfreeze_schedule: UnfreezeSchedule = "steps",
        # half the run: the lower groups still train for many steps (the bottom one for the
        # second half), and the new head and the top of the backbone get the first half, when
        # the rate is near its peak, before the pretrained features below them move
        unfreeze_fraction: Fraction = 0.5,
    ) -> None:
        if finetune not in FINETUNE_MODES:
            raise ConfigError(f"model.finetune='{finetune}' is not one of {list(FINETUNE_MODES)}")
        if unfreeze_schedule not in UNFREEZE_SCHEDULES:
            raise ConfigError(
                f"model.unfreeze_schedule='{unfreeze_schedule}' is not one of "
                f"{list(UNFREEZE_SCHEDULES)}"
            )
        check_arguments(Classifier.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.configure_lr(discriminative_lr, lr_scaling)
        self.finetune = finetune
        self.unfreeze_schedule = unfreeze_schedule
        self.unfreeze_fraction = unfreeze_fraction
        self.unfreeze_epochs = unfreeze_epochs
        self._unfreeze_total_steps = 0  # the run's optimizer steps, known when a fit starts
        self._unfrozen: int | None = None  # how many layer groups the last stage unfroze
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
        if self.finetune != "gradual_unfreeze" or stage != "fit":
            return
        # DDP only synchronises the parameters that are trainable when it wraps the model:
        # groups unfrozen later would drift apart on every device without an error
        if self.trainer.world_size > 1:
            raise ConfigError(
                "model.finetune=gradual_unfreeze trains on one device (DDP does not synchronise "
                "parameters unfrozen during the run); set trainer.devices=1 and trainer.num_nodes=1"
            )
        # checked when a fit starts, not in __init__: the checkpoints of runs from before the
        # step schedule hold unfreeze_epochs=1 and no schedule, and must still load for ptft-eval
        if self.unfreeze_schedule == "steps" and self.unfreeze_epochs is not None:
            raise ConfigError(
                f"model.unfreeze_epochs={self.unfreeze_epochs} sets the epoch schedule: add "
                "model.unfreeze_schedule=epochs, or give model.unfreeze_fraction instead"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.finetune != "gradual_unfreeze":
            return
        if self.unfreeze_schedule == "steps":
            total = self.trainer.estimated_stepping_batches
            if math.isinf(total) or total < 1:
                raise ConfigError(
                    "model.unfreeze_schedule=steps needs a run of known length: set "
                    "trainer.max_steps, or give data of known length with trainer.max_epochs"
                )
            self._unfreeze_total_steps = int(total)
        # a new fit, or one resumed mid-epoch (ckpt_path=), which does not start that epoch
        # again: its stage is applied here, whatever state the module was left in
        self._unfrozen = None
        self._unfreeze()

    def on_train_epoch_start(self) -> None:
        if self.finetune == "gradual_unfreeze":
            self._unfreeze()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # global_step counts optimizer steps: it is the same for every batch a step accumulates
        if self.finetune == "gradual_unfreeze":
            self._unfreeze()

    def _unfreeze(self) -> None:
        """Gradual unfreezing: train the top layer groups the schedule gives for where the loop
        is (the optimizer step, or the epoch), and freeze the rest."""
        groups = self.backbone.layer_groups()
        if self.unfreeze_schedule == "steps":
            where, position = "step", self.trainer.global_step
            count = unfreeze_count(
                position, self._unfreeze_total_steps, len(groups), self.unfreeze_fraction
            )
        else:
            where, position = "epoch", self.trainer.current_epoch
            count = min(unfreeze_stage(position, self.unfreeze_epochs or 1), len(groups))
        if count == self._unfrozen:
            return
        if self.trainer.is_global_zero:
            log.info(
                "gradual unfreezing: %s %d trains the head and the top %d of %d layer groups",
                where,
                position,
                count,
                len(groups),
            )
        unfreeze_top(groups, count, self.training)
        self._unfrozen = count

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
