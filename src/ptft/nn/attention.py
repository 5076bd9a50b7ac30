"""Multi-head self-attention on ``F.scaled_dot_product_attention``: causal or bidirectional,
with a key padding mask, optional rotary positions, grouped-query attention (fewer key/value
heads than query heads, Ainslie et al. 2023) and a key/value cache for decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptft.nn.positions import Rotary

#: keys and values of the positions seen so far, each ``(B, H, T_past, Dh)``
KV = tuple[Tensor, Tensor]


def allowed_keys(
    q_len: int,
    k_len: int,
    causal: bool,
    key_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Bool ``(B or 1, 1, q_len, k_len)``: True where a query may attend to a key.

    The queries are the last ``q_len`` of the ``k_len`` positions (the rest are cached).
    ``key_mask (B, k_len)`` is True for real tokens. Every query may always see its own key,
    so a padded query with no real key before it gets a finite (ignored) row, not NaN.
    """
    past = k_len - q_len
    q_pos = torch.arange(past, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = (
        k_pos <= q_pos if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    )
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, None, :]) | (k_pos == q_pos)
    return allowed


class SelfAttention(nn.Module):
    """``(B, T, dim)`` → ``(B, T, dim)`` with a fused q/k/v projection and an output projection.

    ``num_kv_heads`` < ``num_heads`` shares each key/value head among ``num_heads //
    num_kv_heads`` query heads (the cache keeps only the shared heads). Dropout acts on the
    attention weights and on the output (the residual branch), in
    training only; the caller adds the residual. ``forward`` also returns this layer's keys
    and values of all positions so far, to be passed back as ``kv_cache`` for the next step.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        causal: bool = True,
        rotary: Rotary | None = None,
        num_kv_heads: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim={dim} is not divisible by num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads} "
                "(each key/value head serves a whole group of query heads)"
            )
        if rotary is not None and rotary.head_dim != dim // num_heads:
            raise ValueError(
                f"rotary head_dim={rotary.head_dim} but attention head dim is {dim // num_heads}"
            )
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.num_kv_heads, self.kv_dim = num_kv_heads, num_kv_heads * (dim // num_heads)
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(dim, dim + 2 * self.kv_dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.rotary = rotary

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, kv_cache: KV | None = None
    ) -> tuple[Tensor, KV]:
        """``key_mask (B, T_past + T)`` bool, True = real token, covers cached and new keys."""
        B, T, _ = x.shape
        if kv_cache is not None and not self.causal:
            raise ValueError(
                "a key/value cache needs causal attention: "
                "bidirectional keys change with every new token"
            )
        # split, not view(B, T, 3, H, Dh).permute(...) and unbind: the same q, k, v views, but
        # backward joins their gradients with one cat instead of a stack plus a reshape copy
        # (about 15% of the attention's forward + backward time on CPU)
        q, k, v = (
            t.view(B, T, -1, self.head_dim).transpose(1, 2)
            for t in self.qkv(x).split((self.dim, self.kv_dim, self.kv_dim), dim=-1)
        )
        past = 0 if kv_cache is None else kv_cache[0].shape[2]
        if self.rotary is not None:
            q, k = self.rotary(q, k, offset=past)  # cached keys were rotated at their own positions
        if kv_cache is not None:
            k, v = torch.cat((kv_cache[0], k), dim=2), torch.cat((kv_cache[1], v), dim=2)
        if key_mask is not None and (
            key_mask.dtype != torch.bool or key_mask.shape != (B, past + T)
        ):
            raise ValueError(
                f"key mask must be bool of shape {[B, past + T]} (cached + new tokens), "
                f"got {key_mask.dtype} {list(key_mask.shape)}"
            )

        mask, is_causal = None, False
        if key_mask is not None or (self.causal and past and T > 1):
            mask = allowed_keys(T, past + T, self.causal, key_mask, x.device)
        elif self.causal and T > 1:
            is_causal = True  # no cache, no padding: SDPA's own (top-left aligned) causal mask fits
        # (a single causal query with no padding sees every key: no mask at all)
        cache = (k, v)
        if self.num_kv_heads != self.num_heads:  # each shared head serves its group of queries
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        y = y.transpose(1, 2).reshape(B, T, self.dim)
        return self.resid_dropout(self.proj(y)), cache
