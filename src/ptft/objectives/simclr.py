"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, symmetric NT-Xent.

Views are drawn on the device, after the batch has been moved there. Under DDP the
projections are gathered from every process with gradients, so the negatives are the
whole global batch, exactly as with one process and the global batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ptft.data.augment import Augment
from ptft.module import BackboneModule
from ptft.nn.heads import ProjectionHead
from ptft.objectives.losses import nt_xent


class SimCLR(BackboneModule):
    """Contrastive pretraining of ``backbone`` with NT-Xent at ``temperature``."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        temperature: float = 0.2,
        projection_hidden_dim: int = 256,
        projection_dim: int = 64,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.temperature = temperature
        self.projector = ProjectionHead(self.backbone.out_dim, projection_hidden_dim, projection_dim)
        self.augment = Augment(**(augment or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def contrastive_loss(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self(self.augment(x)), self(self.augment(x))
        if self.trainer is not None and self.trainer.world_size > 1:
            z1_all = self.all_gather(z1, sync_grads=True).flatten(0, 1)
            z2_all = self.all_gather(z2, sync_grads=True).flatten(0, 1)
            offset = self.global_rank * z1.shape[0]
            return nt_xent(z1, z2, self.temperature, z1_all=z1_all, z2_all=z2_all, offset=offset)
        return nt_xent(z1, z2, self.temperature)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.contrastive_loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.contrastive_loss(batch[0]), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self.log("test/loss", self.contrastive_loss(batch[0]), sync_dist=True)
