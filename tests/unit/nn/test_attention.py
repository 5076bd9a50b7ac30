"""Self-attention against a naive softmax(QKᵀ/√d)·V with hand-built masks, computed from
the module's own projection weights: causal, bidirectional with padding, RoPE, the cache."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.nn.attention import SelfAttention, allowed_keys
from ptft.nn.positions import Rotary

B, T, DIM, HEADS = 2, 7, 16, 4


def _rotate(x: torch.Tensor, first_position: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE by complex multiplication: pair (x_2i, x_2i+1) at position m times exp(i·m·θ_i)."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(x.shape[-2]):
        m = first_position + t
        for i in range(d // 2):
            z = torch.complex(x[..., t, 2 * i], x[..., t, 2 * i + 1]) * complex(
                math.cos(m * base ** (-2 * i / d)), math.sin(m * base ** (-2 * i / d))
            )
            out[..., t, 2 * i], out[..., t, 2 * i + 1] = z.real, z.imag
    return out


def naive_attention(
    attn: SelfAttention, x: torch.Tensor, allowed: torch.Tensor, rope: bool = False
) -> torch.Tensor:
    """``allowed (B, T, T)``: may query t attend to key s. Explicit softmax, no SDPA."""
    b, t, d = x.shape
    h, dh = attn.num_heads, d // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = (qkv[..., i * d : (i + 1) * d].reshape(b, t, h, dh).transpose(1, 2) for i in range(3))
    if rope:
        q, k = _rotate(q, 0), _rotate(k, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    y = (weights @ v).transpose(1, 2).reshape(b, t, d)
    return y @ attn.proj.weight.T + attn.proj.bias


def _causal_allowed(b: int, t: int) -> torch.Tensor:
    allowed = torch.zeros(b, t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(i + 1):
            allowed[:, i, j] = True
    return allowed


def _module(causal: bool, rope: bool = False) -> SelfAttention:
    torch.manual_seed(0)
    rotary = Rotary(DIM // HEADS, 32) if rope else None
    attn = SelfAttention(
        DIM, HEADS, dropout=0.5, causal=causal, rotary=rotary
    ).eval()  # eval: no dropout
    with torch.no_grad():  # non-zero biases so a wrong bias path shows
        attn.qkv.bias.normal_()
        attn.proj.bias.normal_()
    return attn


@pytest.mark.parametrize("rope", [False, True])
def test_causal_attention_matches_naive(rope):
    attn = _module(causal=True, rope=rope)
    x = torch.randn(B, T, DIM)
    out, (k, v) = attn(x)
    expected = naive_attention(attn, x, _causal_allowed(B, T), rope=rope)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert k.shape == v.shape == (B, HEADS, T, DIM // HEADS)
    # and it is not bidirectional attention in disguise
    full = naive_attention(attn, x, torch.ones(B, T, T, dtype=torch.bool), rope=rope)
    assert not torch.allclose(out[:, :-1], full[:, :-1], atol=1e-3)


@pytest.mark.parametrize("rope", [False, True])
def test_bidirectional_attention_with_padding_matches_naive(rope):
    attn = _module(causal=False, rope=rope)
    x = torch.randn(B, T, DIM)
    lengths = [T, 4]
    key_mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    allowed = torch.zeros(B, T, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        allowed[b, :, :n] = True
    out, _ = attn(x, key_mask=key_mask)
    expected = naive_attention(attn, x, allowed, rope=rope)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :n], expected[b, :n], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(out).all()
    # the padding mask matters: attending to the padded keys would give other outputs
    unmasked, _ = attn(x)
    assert not torch.allclose(unmasked[1, :4], out[1, :4], atol=1e-3)


def test_cached_queries_match_the_naive_causal_rows():
    attn = _module(causal=True, rope=True)
    x = torch.randn(B, T, DIM)
    expected = naive_attention(attn, x, _causal_allowed(B, T), rope=True)
    _, cache = attn(x[:, :4])
    out, (k, v) = attn(x[:, 4:], kv_cache=cache)  # three new queries after four cached positions
    torch.testing.assert_close(out, expected[:, 4:], atol=1e-5, rtol=1e-4)
    assert k.shape[2] == v.shape[2] == T


def test_causal_attention_with_left_padding_and_cache_matches_naive():
    attn = _module(causal=True)
    x = torch.randn(B, T, DIM)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, :3] = False  # row 1 is left-padded by three
    allowed = _causal_allowed(B, T) & key_mask[:, None, :]
    expected = naive_attention(attn, x, allowed | torch.eye(T, dtype=torch.bool))
    _, cache = attn(x[:, :5], key_mask=key_mask[:, :5])
    out, _ = attn(x[:, 5:], key_mask=key_mask, kv_cache=cache)
    torch.testing.assert_close(out, expected[:, 5:], atol=1e-5, rtol=1e-4)
    first, _ = attn(x[:, :5], key_mask=key_mask[:, :5])
    torch.testing.assert_close(first[1, 3:], expected[1, 3:5], atol=1e-5, rtol=1e-4)
    assert torch.isfinite(first).all()  # padded queries that see no real key are not NaN


@pytest.mark.parametrize("causal", [True, False])
def test_allowed_keys_by_hand(causal):
    key_mask = torch.tensor([[True] * 6, [False, False, False, False, True, True]])
    allowed = allowed_keys(3, 6, causal, key_mask)  # queries at positions 3, 4, 5
    assert allowed.shape == (2, 1, 3, 6)
    for b in range(2):
        for i, q_pos in enumerate((3, 4, 5)):
            for k_pos in range(6):
                visible = (k_pos <= q_pos or not causal) and bool(key_mask[b, k_pos])
                # a query always sees itself, so a padded query's row is never empty
                # (NaN on some kernels)
                assert bool(allowed[b, 0, i, k_pos]) == (visible or k_pos == q_pos), (
                    b,
                    q_pos,
                    k_pos,
                )


def test_attention_dropout_only_in_training():
    attn = _module(causal=False)
    x = torch.randn(B, T, DIM)
    attn.train()
    a, _ = attn(x)
    b, _ = attn(x)
    assert not torch.allclose(a, b)
    attn.eval()
    torch.testing.assert_close(attn(x)[0], attn(x)[0], rtol=0, atol=0)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="not divisible"):
        SelfAttention(10, 3)
    attn = _module(causal=False)
    with pytest.raises(ValueError, match="needs causal attention"):
        attn(
            torch.randn(1, 1, DIM),
            kv_cache=(torch.zeros(1, HEADS, 2, 4), torch.zeros(1, HEADS, 2, 4)),
        )
    with pytest.raises(ValueError, match=r"key mask must be bool of shape \[1, 3\]"):
        attn(torch.randn(1, 3, DIM), key_mask=torch.ones(1, 2, dtype=torch.bool))
