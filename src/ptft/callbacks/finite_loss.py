"""Stop a run at the first training step whose loss is NaN or infinite.

A diverged run otherwise trains on to the end on NaN weights and reports NaN metrics; in a
sweep, the job then fails with a clear reason (``ptft.sweeps.job``) instead of ranking as a NaN.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ptft.errors import ConfigError


class NonFiniteLossError(ConfigError):
    """The training loss became NaN or infinite: a setting (usually the learning rate) to change."""


class FiniteLoss(L.Callback):
    """Raise :class:`NonFiniteLossError` before the backward pass of a non-finite training loss."""

    def __init__(self) -> None:
        self.batch_idx = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        local = bool(torch.isfinite(loss.detach()).all())
        finite = local
        if trainer.world_size > 1:
            # every rank stops together: one rank raising alone would leave the others waiting
            # in the gradient all-reduce
            finite = trainer.strategy.reduce_boolean_decision(local, all=True)
        if finite:
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        if local:
            value = "not finite on another process"
        else:
            value = loss.detach().float().item() if loss.numel() == 1 else "not finite"
        raise NonFiniteLossError(
            f"train/loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {self.batch_idx}): training diverged; lower model.optimizer.lr"
            + (f" (now {lr:.3g})" if lr is not None else "")
            + " or set trainer.gradient_clip_val=1.0"
        )
