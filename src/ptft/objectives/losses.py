"""Losses as small pure functions, each tested against a naive computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    *,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric NT-Xent (Chen et al. 2020, eq. 1), averaged over all 2N anchors.

    ``z1[i]`` and ``z2[i]`` are two views of example ``i``. Each anchor's positive is
    its other view; the other 2N−2 views are its negatives; its own similarity is
    masked out (not subtracted). Cosine similarities divided by ``temperature`` go
    through cross-entropy, i.e. a stable log-sum-exp, in at least float32 whatever
    the autocast dtype.

    Under DDP pass this process's views as ``z1``/``z2``, the views gathered from all
    processes (with gradients) as ``z1_all``/``z2_all``, and this process's first
    index in the gathered batch as ``offset``: the loss is then this process's share
    of the global loss, and averaging over processes gives exactly the loss (and
    gradients) of one process with the whole batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent temperature must be > 0, got {temperature}")
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    n, n_all = z1.shape[0], z1_all.shape[0]

    dtype = torch.promote_types(z1.dtype, torch.float32)  # bf16/fp16 → fp32, fp64 stays
    with torch.autocast(z1.device.type, enabled=False):  # autocast would run the matmul in bf16
        anchors = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)  # (2n, D)
        candidates = F.normalize(torch.cat([z1_all, z2_all]).to(dtype), dim=1)  # (2N, D)
        logits = anchors @ candidates.T / temperature  # (2n, 2N)

    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + n_all])
    positive_index = torch.cat([local + n_all, local])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=z1.device), self_index] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    with torch.autocast(z1.device.type, enabled=False):
        return F.cross_entropy(logits, positive_index)
