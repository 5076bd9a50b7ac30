"""Normalisation layers a Transformer can be configured with: LayerNorm (Ba et al. 2016; GPT-2,
BERT) and RMSNorm (Zhang & Sennrich 2019; Llama)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

NORMS = ("layernorm", "rmsnorm")
Norm = Literal["layernorm", "rmsnorm"]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight``, computed in float32 and cast back before the
    scale (as Llama does), so bf16 activations keep a float32-accurate norm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """A ``kind`` norm over the last ``dim`` features."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm={kind!r}; choose one of {', '.join(NORMS)}")
