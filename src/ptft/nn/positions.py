"""Position information for token sequences: sinusoidal tables and rotary embeddings.

* ``sinusoidal`` is the fixed table of Vaswani et al. 2017, §3.5, added to token embeddings.
* ``Rotary`` (RoPE, Su et al. 2021) rotates queries and keys instead, so that q·k depends
  only on the distance between the two positions.
* Learned absolute positions need nothing here: they are a plain ``nn.Embedding``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sinusoidal(num_positions: int, dim: int) -> Tensor:
    """The ``(num_positions, dim)`` table ``PE(pos, 2i) = sin(pos / 10000^(2i/dim))``,
    ``PE(pos, 2i+1) = cos(pos / 10000^(2i/dim))`` (Vaswani et al. 2017).

    Every column follows the formula with the given ``dim``; for an odd ``dim`` the last
    column (index ``dim - 1``, even) is a sine whose cosine partner would be column ``dim``,
    so it is simply left without one. Computed in float64, returned in float32.
    """
    if num_positions < 0 or dim < 1:
        raise ValueError(
            f"sinusoidal needs num_positions >= 0 and dim >= 1, got {num_positions}, {dim}"
        )
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)  # the even column indices 2i
    angle = pos / 10000.0 ** (two_i / dim)  # (num_positions, ceil(dim / 2))
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])  # an odd dim has one cosine fewer
    return table.float()


def rotary_tables(
    head_dim: int, max_positions: int, base: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the angles ``m·θ_i``, ``θ_i = base^(-2i/head_dim)``, each
    ``(max_positions, head_dim // 2)`` in float32 (computed in float64 for long contexts)."""
    if head_dim % 2:
        raise ValueError(
            f"rotary positions rotate pairs of features: head_dim must be even, got {head_dim}"
        )
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(max_positions, dtype=torch.float64)[:, None] * theta
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair ``(x[..., 2i], x[..., 2i+1])`` of ``x (..., T, Dh)`` by the angle
    whose ``cos``/``sin`` ``(T, Dh // 2)`` are given; the pairing is the paper's (eq. 34)."""
    # float32 for the rotation even under bf16 autocast; the result goes back to x's dtype
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class Rotary(nn.Module):
    """RoPE for queries and keys ``(B, H, T, Dh)`` at positions ``offset … offset + T - 1``.

    ``offset`` is the number of positions already in a key/value cache. The tables are
    non-persistent buffers: they follow ``.to(device)`` but stay out of the state dict, since
    they are a pure function of the config.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.max_positions = head_dim, max_positions
        cos, sin = rotary_tables(head_dim, max_positions, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        length = q.shape[-2]
        if offset < 0 or offset + length > self.max_positions:
            raise ValueError(
                f"rotary positions {offset}..{offset + length - 1} are outside the table of "
                f"{self.max_positions} positions; raise max_positions"
            )
        cos, sin = self.cos[offset : offset + length], self.sin[offset : offset + length]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
