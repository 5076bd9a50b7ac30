"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, symmetric NT-Xent.

Views are drawn on the device, after the batch has been moved there. Under DDP the
projections are gathered from every process with gradients, so the negatives are the
whole global batch, exactly as with one process and the global batch size.

The representation is monitored on labelled images (``model.knn``, ``model.online_probe``;
see :mod:`ptft.monitors.features`); the contrastive loss never sees a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ptft.config.bounds import PositiveFloat, PositiveInt, check_arguments
from ptft.data.augment import Augment, AugmentConfig
from ptft.modules.backbone_module import BackboneModule
from ptft.monitors.features import FeatureMonitor, KNNConfig, MonitoredObjective, OnlineProbeConfig
from ptft.nn.heads import ProjectionHead
from ptft.objectives.losses import gathered_nt_xent


class SimCLR(MonitoredObjective, BackboneModule):
    """Contrastive pretraining of ``backbone`` with NT-Xent at ``temperature``."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        temperature: PositiveFloat = 0.2,
        projection_hidden_dim: PositiveInt = 256,
        projection_dim: PositiveInt = 64,
        augment: AugmentConfig | None = None,
        num_classes: PositiveInt | None = None,
        knn: KNNConfig | None = None,
        online_probe: OnlineProbeConfig | None = None,
    ) -> None:
        # NT-Xent divides by the temperature: a bad one would fail only at the first loss
        check_arguments(SimCLR.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.temperature = temperature
        self.projector = ProjectionHead(
            self.backbone.out_dim, projection_hidden_dim, projection_dim
        )
        self.augment = Augment(**(augment or {}))
        self.feature_monitor = FeatureMonitor(self.backbone.out_dim, num_classes, knn, online_probe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features of a first random view, and the projections of two views."""
        h1 = self.backbone(self.augment(x))
        h2 = self.backbone(self.augment(x))
        return h1, self.projector(h1), self.projector(h2)

    def contrastive_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return gathered_nt_xent(self, z1, z2, self.temperature)

    # -- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        h1, z1, z2 = self.views(batch[0])
        loss = self.contrastive_loss(z1, z2)
        self.log("train/loss", loss, prog_bar=True)
        return self.with_probe_loss(loss, h1, batch)

    def _eval_step(self, batch: Sequence[torch.Tensor], stage: str) -> None:
        # (x,) from data without labels (an unlabelled image folder): no monitor to feed
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        _, z1, z2 = self.views(x)
        self.log(
            f"{stage}/loss", self.contrastive_loss(z1, z2), prog_bar=stage == "val", sync_dist=True
        )
        if self.feature_monitor.active and y is not None:
            self.feature_monitor.observe(self.backbone(x), y, stage)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval_epoch("val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval_epoch("test")
