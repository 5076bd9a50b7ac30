"""Batched image augmentation on the device with kornia.

The defaults suit tiny grey images such as 8×8 digits: one random affine warp (rotation,
shift, zoom in or out, shear) keeps the digit legible, Gaussian noise and a small random
erasing make the model look at more than a few pixels. The zoom of the affine warp does
the job of a resized crop: kornia's RandomResizedCrop costs about 8 ms per batch of 64
digits on 2 CPU cores against about 1 ms for the affine warp, and a fine-tuning step of
the whole CNN costs about 12 ms. Images are expected in [0, 1] and stay there.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

from ptft.config.bounds import Fraction, NonNegativeFloat, PositiveFloat, Probability


class AugmentConfig(TypedDict, total=False):
    """``model.augment``: keyword arguments of :class:`Augment` (its defaults apply to the
    others)."""

    degrees: NonNegativeFloat
    translate: Probability
    scale: tuple[PositiveFloat, PositiveFloat]
    shear: NonNegativeFloat
    noise_std: NonNegativeFloat
    erase_p: Probability
    erase_scale: tuple[Fraction, Fraction]
    p: Probability


class Augment(nn.Module):
    """One random view of a batch ``(B, C, H, W)``, drawn independently per image."""

    def __init__(
        self,
        degrees: float = 12.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.85, 1.25),
        shear: float = 8.0,
        noise_std: float = 0.05,
        erase_p: float = 0.25,
        erase_scale: tuple[float, float] = (0.02, 0.12),
        p: float = 1.0,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.affine = K.RandomAffine(
            degrees=degrees, translate=(translate, translate), scale=tuple(scale), shear=shear, p=p
        )
        self.noise = (
            K.RandomGaussianNoise(mean=0.0, std=noise_std, p=p) if noise_std > 0 else nn.Identity()
        )
        self.erase = (
            K.RandomErasing(scale=tuple(erase_scale), p=erase_p) if erase_p > 0 else nn.Identity()
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = self.erase(self.noise(self.affine(x.float())))
        return x.clamp_(0.0, 1.0).to(dtype)
