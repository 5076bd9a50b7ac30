"""Positions: the sinusoidal table against the paper's formula, element by element; RoPE
against a complex-number rotation, its norm preservation and its relative-position property."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.nn.positions import Rotary, sinusoidal


@pytest.mark.parametrize(
    ("num_positions", "dim"), [(1, 1), (7, 4), (20, 6), (13, 5), (50, 33), (128, 64)]
)
def test_sinusoidal_matches_the_formula(num_positions, dim):
    expected = torch.empty(num_positions, dim, dtype=torch.float64)
    for pos in range(num_positions):
        for col in range(dim):
            two_i = col - col % 2  # columns 2i and 2i+1 share the frequency 1 / 10000^(2i/dim)
            angle = pos / 10000 ** (two_i / dim)
            expected[pos, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    table = sinusoidal(num_positions, dim)
    assert table.shape == (num_positions, dim) and table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, rtol=0, atol=1e-6)


def test_sinusoidal_known_values():
    table = sinusoidal(3, 4)
    # pos 1: sin(1), cos(1), sin(1/100), cos(1/100)
    expected = torch.tensor([0.841471, 0.540302, 0.00999983, 0.99995])
    torch.testing.assert_close(table[1], expected, atol=1e-6, rtol=0)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


def _rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Independent RoPE: pairs (x_2i, x_2i+1) as complex numbers times exp(i·m·θ_i)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(
        torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None].double() * theta
    )
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * rot).flatten(-2)


def test_rope_matches_complex_rotation_with_offset():
    torch.manual_seed(0)
    rope = Rotary(head_dim=8, max_positions=64)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    rq, rk = rope(q, k, offset=11)
    positions = torch.arange(11, 16)
    torch.testing.assert_close(rq.double(), _rope_complex(q, positions), atol=1e-5, rtol=0)
    torch.testing.assert_close(rk.double(), _rope_complex(k, positions), atol=1e-5, rtol=0)


def test_rope_preserves_norms():
    torch.manual_seed(1)
    rope = Rotary(head_dim=16, max_positions=256)
    q, k = torch.randn(3, 2, 40, 16), torch.randn(3, 2, 40, 16)
    rq, rk = rope(q, k, offset=200)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1))
    assert not torch.allclose(rq, q)  # it did rotate


def _rotate_at(rope: Rotary, x: torch.Tensor, position: int) -> torch.Tensor:
    """Rotate one vector ``x (Dh,)`` as if it sat at ``position``."""
    rotated, _ = rope(x.view(1, 1, 1, -1), x.view(1, 1, 1, -1), offset=position)
    return rotated.flatten()


def test_rope_dot_product_depends_only_on_the_offset():
    torch.manual_seed(2)
    rope = Rotary(head_dim=32, max_positions=512)
    q, k = torch.randn(32), torch.randn(32)
    by_offset = {}
    for diff in (0, 1, 3, 17, -5):
        dots = [
            float(_rotate_at(rope, q, m) @ _rotate_at(rope, k, m - diff))
            for m in (20, 57, 130, 400)
        ]
        assert max(dots) - min(dots) < 1e-4, (diff, dots)
        by_offset[diff] = dots[0]
    values = sorted(by_offset.values())
    assert (
        min(b - a for a, b in zip(values, values[1:], strict=False)) > 1e-3
    )  # different offsets differ


def test_rope_rejects_positions_beyond_the_table_and_odd_head_dim():
    rope = Rotary(head_dim=4, max_positions=10)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="outside the table of 10 positions"):
        rope(x, x, offset=7)
    with pytest.raises(ValueError, match="head_dim must be even"):
        Rotary(head_dim=5, max_positions=10)
