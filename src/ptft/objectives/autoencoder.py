"""Autoencoder pretraining: encoder = backbone, an MLP decoder, MSE reconstruction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ptft.callbacks.images import image_grid, log_image
from ptft.module import BackboneModule
from ptft.nn.heads import ImageDecoder


class Autoencoder(BackboneModule):
    """Reconstructs the input image from the backbone's features (pixels in [0, 1])."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        decoder_hidden_dims: Sequence[int] = (256,),
        num_logged_images: int = 32,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.decoder = ImageDecoder(self.backbone.out_dim, self.input_shape, decoder_hidden_dims)
        self.num_logged_images = num_logged_images
        self._grid_inputs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self(x)
        return F.mse_loss(recon.float(), x.float()), recon

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        loss, recon = self._loss(x)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if batch_idx == 0 and self.num_logged_images > 0:
            n = self.num_logged_images
            self._grid_inputs = torch.cat([x[:n], recon[:n].to(x.dtype)])

    def on_validation_epoch_end(self) -> None:
        if self._grid_inputs is not None and not self.trainer.sanity_checking:
            n = len(self._grid_inputs) // 2
            # top rows: inputs; bottom rows: their reconstructions
            log_image(self, "val/reconstructions", image_grid(self._grid_inputs, ncol=min(n, 16)))
        self._grid_inputs = None

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        loss, _ = self._loss(batch[0])
        self.log("test/loss", loss, sync_dist=True)
