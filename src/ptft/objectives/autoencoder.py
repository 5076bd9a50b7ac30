"""Autoencoder pretraining: encoder = backbone, an MLP decoder, MSE reconstruction.

The representation is monitored on labelled images (``model.knn``, ``model.online_probe``;
see :mod:`ptft.monitors.features`); the reconstruction loss never sees a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ptft.config.bounds import NonNegativeInt, PositiveInt, check_arguments
from ptft.modules.backbone_module import BackboneModule
from ptft.monitors.features import FeatureMonitor, KNNConfig, MonitoredObjective, OnlineProbeConfig
from ptft.monitors.images import image_grid, log_image
from ptft.nn.heads import ImageDecoder


class Autoencoder(MonitoredObjective, BackboneModule):
    """Reconstructs the input image from the backbone's features (pixels in [0, 1])."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        decoder_hidden_dims: Sequence[PositiveInt] = (256,),
        num_logged_images: NonNegativeInt = 32,
        num_classes: PositiveInt | None = None,
        knn: KNNConfig | None = None,
        online_probe: OnlineProbeConfig | None = None,
    ) -> None:
        check_arguments(Autoencoder.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.decoder = ImageDecoder(self.backbone.out_dim, self.input_shape, decoder_hidden_dims)
        self.num_logged_images = num_logged_images
        self._grid_inputs: torch.Tensor | None = None
        self.feature_monitor = FeatureMonitor(self.backbone.out_dim, num_classes, knn, online_probe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(MSE, reconstruction, backbone features)`` of a batch of images."""
        features = self.backbone(x)
        recon = self.decoder(features)
        return F.mse_loss(recon.float(), x.float()), recon, features

    # -- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, features = self._loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return self.with_probe_loss(loss, features, batch)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        # (x,) from data without labels (an unlabelled image folder): no monitor to feed
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        loss, recon, features = self._loss(x)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if y is not None:
            self.feature_monitor.observe(features, y, "val")
        if batch_idx == 0 and self.num_logged_images > 0:
            n = self.num_logged_images
            self._grid_inputs = torch.cat([x[:n], recon[:n].to(x.dtype)])

    def on_validation_epoch_end(self) -> None:
        if self._grid_inputs is not None and not self.trainer.sanity_checking:
            n = len(self._grid_inputs) // 2
            # top rows: inputs; bottom rows: their reconstructions
            log_image(self, "val/reconstructions", image_grid(self._grid_inputs, ncol=min(n, 16)))
        self._grid_inputs = None
        self._end_eval_epoch("val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        loss, _, features = self._loss(x)
        self.log("test/loss", loss, sync_dist=True)
        if y is not None:
            self.feature_monitor.observe(features, y, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval_epoch("test")
