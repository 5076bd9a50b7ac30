"""Tile image batches into one grid and send it to every logger that takes images."""

from __future__ import annotations

import math

import lightning as L
import torch


def image_grid(images: torch.Tensor, ncol: int = 8, pad: int = 1) -> torch.Tensor:
    """``(B, C, H, W)`` in [0, 1] → one ``(C, rows·(H+pad)+pad, ncol·(W+pad)+pad)`` image."""
    b, c, h, w = images.shape
    ncol = min(ncol, b)
    nrow = math.ceil(b / ncol)
    grid = images.new_ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(b):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def log_image(module: L.LightningModule, tag: str, image: torch.Tensor) -> None:
    """Log a ``(C, H, W)`` image to the loggers that support images (TensorBoard)."""
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(
                tag, image.float().clamp(0, 1).cpu(), global_step=module.global_step
            )
