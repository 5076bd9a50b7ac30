"""``token_loss``: the chunked fp32 cross-entropy of the LM objectives gives the value and the
gradient of ``F.cross_entropy(logits.float(), labels, ignore_index=-100)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptft.objectives.losses import token_loss

#: a non-unit upstream gradient, which must be scaled through
UPSTREAM = 3.0


def reference(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation: loss and gradient w.r.t. the logits."""
    logits = logits.detach().clone().requires_grad_()
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
    (UPSTREAM * loss).backward()
    return loss.detach(), logits.grad


def ours(
    logits: torch.Tensor, labels: torch.Tensor, rows: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().clone().requires_grad_()
    loss = token_loss(logits, labels, rows=rows)
    (UPSTREAM * loss).backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [None, 1, 7, 64])  # chunks that do and do not divide the rows
def test_matches_cross_entropy(dtype, rows):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 13, 50, generator=g)).to(dtype)
    labels = torch.randint(0, 50, (4, 13), generator=g)
    labels[:, ::3] = -100  # unscored positions
    want_loss, want_grad = reference(logits, labels)
    loss, grad = ours(logits, labels, rows)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
    # fp32: rounding only; bf16: both round the same fp32 gradient once (at most an ulp apart)
    tol = 1e-6 if dtype == torch.float32 else 2**-8 * want_grad.float().abs().max().item()
    assert torch.allclose(grad.float(), want_grad.float(), atol=tol, rtol=0)
    assert (grad[labels == -100] == 0).all()


def test_no_scored_token_gives_nan_and_zero_gradient_like_cross_entropy():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    want_loss, want_grad = reference(logits, labels)
    loss, grad = ours(logits, labels, rows=None)
    assert torch.isnan(loss) and torch.isnan(want_loss)
    assert torch.equal(grad, want_grad)


def test_under_bf16_autocast_the_loss_stays_fp32():
    linear = torch.nn.Linear(8, 20)
    x, labels = torch.randn(6, 8), torch.randint(0, 20, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(x)
        loss = token_loss(logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert linear.weight.grad is not None and torch.isfinite(linear.weight.grad).all()
