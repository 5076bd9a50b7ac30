"""Batched image augmentation on the device with kornia.

The defaults suit tiny grey images such as 8×8 digits: small affine jitter and
resized crops keep the digit legible, Gaussian noise and a small random erasing
make the model look at more than a few pixels. Images are expected in [0, 1] and
stay there.
"""

from __future__ import annotations

import torch
from torch import nn


class Augment(nn.Module):
    """One random view of a batch ``(B, C, H, W)``, drawn independently per image."""

    def __init__(
        self,
        degrees: float = 12.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.85, 1.15),
        shear: float = 8.0,
        crop_scale: tuple[float, float] = (0.7, 1.0),
        noise_std: float = 0.05,
        erase_p: float = 0.25,
        erase_scale: tuple[float, float] = (0.02, 0.12),
        p: float = 1.0,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.crop_scale = tuple(crop_scale)
        self.affine = K.RandomAffine(
            degrees=degrees, translate=(translate, translate), scale=tuple(scale), shear=shear, p=p
        )
        self.noise = K.RandomGaussianNoise(mean=0.0, std=noise_std, p=p) if noise_std > 0 else nn.Identity()
        self.erase = K.RandomErasing(scale=tuple(erase_scale), p=erase_p) if erase_p > 0 else nn.Identity()
        self._crop: nn.Module | None = None
        self._crop_size: tuple[int, int] | None = None

    def _crop_for(self, x: torch.Tensor) -> nn.Module:
        import kornia.augmentation as K

        size = tuple(x.shape[-2:])
        if self._crop is None or self._crop_size != size:  # crops back to the input's size
            self._crop = K.RandomResizedCrop(size=size, scale=self.crop_scale, ratio=(0.8, 1.25))
            self._crop_size = size
        return self._crop

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = self._crop_for(x)(x)
        x = self.affine(x)
        x = self.noise(x)
        x = self.erase(x)
        return x.clamp_(0.0, 1.0).to(dtype)
