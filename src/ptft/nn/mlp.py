"""A multilayer perceptron backbone for images: flatten, then Linear-Norm-GELU blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ptft.config.bounds import PositiveInt, Probability
from ptft.nn.backbone import Backbone


class MLP(Backbone):
    """``(B, C, H, W)`` → ``(B, hidden[-1])``; one layer group per hidden layer."""

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden_dims: Sequence[PositiveInt] = (256, 256),
        dropout: Probability = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_dims:
            raise ValueError("mlp backbone needs at least one hidden layer (hidden_dims)")
        self.input_shape = tuple(input_shape)
        in_dim = math.prod(self.input_shape)
        blocks = []
        for width in hidden_dims:
            blocks.append(
                nn.Sequential(
                    nn.Linear(in_dim, width),
                    nn.LayerNorm(width),
                    nn.GELU(),
                    nn.Dropout(dropout),
                )
            )
            in_dim = width
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return x

    def layer_groups(self) -> list[nn.Module]:
        return list(self.blocks)
