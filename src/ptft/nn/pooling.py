"""Pool token features ``(B, T, D)`` into one vector per sequence ``(B, D)``.

``first`` reads position 0 (BERT's [CLS] role: in a bidirectional model it attends to the
whole text), ``last`` the last real token (in a causal model the only one that has seen the
whole text), ``mean`` averages the real tokens. ``auto`` picks first or last to fit the backbone.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("auto", "first", "last", "mean")


def resolve_pooling(pooling: str, causal: bool) -> str:
    """``auto`` → ``last`` for a causal backbone, ``first`` for a bidirectional one."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; choose one of {', '.join(POOLINGS)}")
    if pooling == "auto":
        return "last" if causal else "first"
    return pooling


def pool(features: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """``features (B, T, D)``, ``mask (B, T)`` bool (True = real token, right-padded) →
    ``(B, D)``."""
    if pooling == "first":
        return features[:, 0]
    if pooling == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return features[torch.arange(features.shape[0], device=features.device), last]
    if pooling == "mean":
        weights = mask.to(features.dtype).unsqueeze(-1)
        return (features * weights).sum(1) / weights.sum(1).clamp(min=1)
    raise ValueError(f"pooling={pooling!r}; choose one of first, last, mean")
