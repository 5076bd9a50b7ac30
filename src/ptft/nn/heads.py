"""Heads that sit on top of a backbone's features: projection MLP and image decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR's projection g(·): Linear-BN-ReLU-Linear (Chen et al. 2020, §2.1)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class ImageDecoder(nn.Module):
    """Features ``(B, D)`` → images ``(B, C, H, W)`` in [0, 1] through an MLP."""

    def __init__(
        self, in_dim: int, output_shape: Sequence[int], hidden_dims: Sequence[int] = (256,)
    ) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(in_dim, width), nn.GELU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, math.prod(self.output_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.output_shape)
