"""Gradual unfreezing (Howard & Ruder 2018, ULMFiT §3.3).

"We first unfreeze the last layer and fine-tune all unfrozen layers for one epoch. We then
unfreeze the next lower frozen layer group and repeat." The head is the last layer and
trains from the start; the backbone's layer groups (``layer_groups()``, bottom to top)
become trainable one per stage of ``epochs_per_stage`` epochs, from the top down, until
all of them train. A frozen group is also kept in eval mode, so its batch-norm statistics
stay as pretrained (as in the linear probe).

The stage is a function of the epoch alone, so a run resumed with ``ckpt_path=`` picks
up where it was. The frozen parameters are in the optimizer from the start (without a
gradient the optimizer skips them), so unfreezing needs no new optimizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
from torch import nn

from ptft.errors import ConfigError

log = logging.getLogger(__name__)


def frozen_groups(groups: Sequence[nn.Module]) -> list[nn.Module]:
    """The groups none of whose parameters train."""
    return [g for g in groups if not any(p.requires_grad for p in g.parameters())]


def unfreeze_top(groups: Sequence[nn.Module], count: int, training: bool = True) -> None:
    """Make the top ``count`` groups trainable and freeze the others; frozen groups go to
    eval mode, trainable ones to ``training`` (the module's mode)."""
    first_trainable = len(groups) - max(0, count)
    # freeze first, then unfreeze: a parameter shared with a trainable group trains
    for group in groups[:first_trainable]:
        group.requires_grad_(False)
        group.eval()
    for group in groups[first_trainable:]:
        group.requires_grad_(True)
        group.train(training)


class GradualUnfreezing(L.Callback):
    """At the start of epoch ``e``, the top ``e // epochs_per_stage`` layer groups train."""

    def __init__(self, epochs_per_stage: int = 1) -> None:
        if epochs_per_stage < 1:
            raise ConfigError(f"model.unfreeze_epochs={epochs_per_stage}: give at least 1 epoch per stage")
        self.epochs_per_stage = epochs_per_stage

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # DDP only synchronises the parameters that are trainable when it wraps the model:
        # groups unfrozen later would drift apart on every device without an error
        if stage == "fit" and trainer.world_size > 1:
            raise ConfigError("model.finetune=gradual_unfreeze trains on one device (DDP does not synchronise "
                              "parameters unfrozen during the run); set trainer.devices=1 and trainer.num_nodes=1")

    def stage(self, epoch: int) -> int:
        """How many backbone layer groups train in ``epoch``."""
        return epoch // self.epochs_per_stage

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        groups = pl_module.backbone.layer_groups()
        count = min(self.stage(trainer.current_epoch), len(groups))
        if trainer.is_global_zero and len(frozen_groups(groups)) != len(groups) - count:
            log.info("gradual unfreezing: epoch %d trains the head and the top %d of %d layer groups",
                     trainer.current_epoch, count, len(groups))
        unfreeze_top(groups, count, pl_module.training)
