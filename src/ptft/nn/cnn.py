"""A small VGG-style convolutional backbone that fits any image size.

Each stage is two 3×3 conv-BN-ReLU layers; stages after the first halve the
resolution with max-pooling while the map is larger than 2×2, so 8×8 digits and
32×32 CIFAR images both work. Adaptive average pooling gives ``(B, channels[-1])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ptft.config.bounds import PositiveInt, Probability
from ptft.nn.backbone import Backbone


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class CNN(Backbone):
    """``(B, C, H, W)`` → ``(B, channels[-1])``; one layer group per stage."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[PositiveInt] = (32, 64, 128),
        dropout: Probability = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"cnn backbone needs (C, H, W) inputs, got input_shape={list(input_shape)}"
            )
        if not channels:
            raise ValueError("cnn backbone needs at least one stage (channels)")
        self.input_shape = tuple(input_shape)
        c_in, size = input_shape[0], min(input_shape[1:])
        stages = []
        for i, c_out in enumerate(channels):
            layers: list[nn.Module] = []
            if i > 0 and size > 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out)
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)

    def layer_groups(self) -> list[nn.Module]:
        return list(self.stages)
