"""NT-Xent against a naive loop over anchors, written separately from the library."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.objectives.losses import nt_xent


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Chen et al. (2020) eq. 1 written out: for each of the 2N anchors, -log of its
    positive's share among all 2N-1 other views, with cosine similarity / t."""
    views = list(z1) + list(z2)
    n = len(z1)
    total = torch.zeros((), dtype=torch.float64)
    for i, anchor in enumerate(views):
        positive = (i + n) % (2 * n)

        def sim(a, b):
            return torch.dot(a, b) / (a.norm() * b.norm())

        numerator = torch.exp(sim(anchor, views[positive]) / t)
        denominator = sum(torch.exp(sim(anchor, views[k]) / t) for k in range(2 * n) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_value_and_gradient(n, temperature):
    g = torch.Generator().manual_seed(n * 100 + int(temperature * 10))
    a1 = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    a2 = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b1, b2 = (a.detach().clone().requires_grad_(True) for a in (a1, a2))

    loss = nt_xent(a1, a2, temperature)
    expected = naive_nt_xent(b1, b2, temperature)
    loss.backward()
    expected.backward()

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(a1.grad.double(), b1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a2.grad.double(), b2.grad, rtol=1e-4, atol=1e-6)


def test_nt_xent_known_values():
    # one pair: no negatives, the positive is certain, loss 0
    z = torch.randn(1, 4)
    assert nt_xent(z, torch.randn(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    # identical views, orthogonal examples: positive sim 1, two negatives at sim 0
    z = torch.eye(2)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(z, z, t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_large_logits_stay_finite():
    z = torch.randn(8, 16)
    loss = nt_xent(z, z + 1e-3 * torch.randn(8, 16), temperature=1e-3)
    assert torch.isfinite(loss)


def test_sharded_loss_averages_to_global_loss_and_gradients():
    """What DDP computes: each rank's local anchors against the gathered batch."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    global_loss = nt_xent(z1, z2, 0.3)
    global_grads = torch.autograd.grad(global_loss, (z1, z2))

    shards = [slice(0, 3), slice(3, 6)]
    local = [nt_xent(z1[s], z2[s], 0.3, z1_all=z1, z2_all=z2, offset=s.start) for s in shards]
    mean_loss = sum(local) / len(local)
    mean_grads = torch.autograd.grad(mean_loss, (z1, z2))

    assert mean_loss.item() == pytest.approx(global_loss.item(), rel=1e-10)
    for a, b in zip(mean_grads, global_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3))


def test_nt_xent_under_bf16_autocast_computes_in_float32():
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    expected = naive_nt_xent(z1.bfloat16().double(), z2.bfloat16().double(), 0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
