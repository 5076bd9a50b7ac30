"""A pre-LayerNorm Transformer backbone for tokens ``(B, T)`` → features ``(B, T, dim)``.

The same module serves a GPT-style causal LM (``causal=True``) and a BERT-style masked LM
(``causal=False``); the objective's head sits on top and may tie its weights to
``token_embedding``. Positions are ``"sinusoidal"`` (Vaswani et al. 2017), ``"learned"``
(GPT-2) or ``"rope"`` (Su et al. 2021). Initialisation follows GPT-2 (Radford et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ptft.config.bounds import NonNegativeInt, PositiveFloat, PositiveInt, Probability
from ptft.nn.attention import KV, SelfAttention
from ptft.nn.backbone import Backbone
from ptft.nn.positions import Rotary, sinusoidal

#: one ``(keys, values)`` pair per block, each ``(B, H, T_past, Dh)``
KVCache = list[KV]

POSITIONS = ("sinusoidal", "learned", "rope")


class FeedForward(nn.Module):
    """Linear → GELU → Linear → dropout, applied to every position alike."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden_dim: int,
        dropout: float,
        causal: bool,
        rotary: Rotary | None,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout, causal, rotary)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, hidden_dim, dropout)

    def forward(self, x: Tensor, key_mask: Tensor | None, kv_cache: KV | None) -> tuple[Tensor, KV]:
        a, kv = self.attn(self.ln1(x), key_mask, kv_cache)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class Transformer(Backbone):
    """Tokens ``(B, T)`` → features ``(B, T, dim)``; layer groups: embeddings, blocks, final norm.

    ``input_shape`` is ``(T,)``, the sequence length the data yields (at most
    ``max_positions``). ``pad_token_id`` gives the default padding mask of a bidirectional
    model (``tokens != pad_token_id``) when none is passed; a causal model attends to every
    earlier token unless given a mask (right padding needs none; left padding does).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        vocab_size: PositiveInt,
        dim: PositiveInt = 256,
        num_layers: PositiveInt = 4,
        num_heads: PositiveInt = 4,
        mlp_ratio: PositiveFloat = 4,
        dropout: Probability = 0.1,
        max_positions: PositiveInt = 512,
        positions: Literal["sinusoidal", "learned", "rope"] = "sinusoidal",
        causal: bool = True,
        pad_token_id: NonNegativeInt | None = 0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1 or not 1 <= input_shape[0] <= max_positions:
            raise ValueError(
                f"transformer backbone needs token inputs of shape (T,) with 1 <= T <= "
                f"max_positions={max_positions}, got input_shape={list(input_shape)} "
                "(the data's sequence length: shorten it)"
            )
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r}; choose one of {', '.join(POSITIONS)}")
        if vocab_size < 1 or num_layers < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(
                "transformer needs vocab_size >= 1, num_layers >= 1 and dim divisible by "
                f"num_heads; got vocab_size={vocab_size}, num_layers={num_layers}, dim={dim}, "
                f"num_heads={num_heads}"
            )
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise ValueError(
                f"pad_token_id={pad_token_id} is outside the vocabulary of {vocab_size}"
            )
        hidden_dim = int(mlp_ratio * dim)
        if hidden_dim < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} leaves no hidden units")
        self.input_shape = tuple(input_shape)
        self.vocab_size, self.dim, self.num_layers, self.num_heads = (
            vocab_size,
            dim,
            num_layers,
            num_heads,
        )
        self.hidden_dim, self.max_positions, self.positions = hidden_dim, max_positions, positions
        self.causal, self.pad_token_id = causal, pad_token_id
        self.out_dim = dim

        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = (
            nn.Embedding(max_positions, dim) if positions == "learned" else None
        )
        if positions == "sinusoidal":
            # a pure function of the config: kept out of the state dict
            self.register_buffer("position_table", sinusoidal(max_positions, dim), persistent=False)
        # one rotary table shared by every block (buffers only, no parameters)
        rotary = Rotary(dim // num_heads, max_positions) if positions == "rope" else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, hidden_dim, dropout, causal, rotary) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, and the projections that write into
        the residual stream at std 0.02/sqrt(2L), so the stream's variance does not grow with
        depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.num_layers))

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_cache: bool = False,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Features ``(B, T, dim)`` of ``tokens (B, T)``, and the updated cache if asked.

        ``attention_mask`` is bool, True = real token, of shape ``(B, T_past + T)`` when a
        ``kv_cache`` of ``T_past`` positions is given (it covers the cached tokens too).
        The new tokens sit at positions ``T_past … T_past + T - 1``.
        """
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(
                "transformer expects integer tokens of shape (B, T), "
                f"got {tokens.dtype} {list(tokens.shape)}"
            )
        if kv_cache is not None and len(kv_cache) != self.num_layers:
            raise ValueError(f"kv_cache has {len(kv_cache)} entries for {self.num_layers} blocks")
        B, T = tokens.shape
        past = 0 if kv_cache is None else kv_cache[0][0].shape[2]
        if past + T > self.max_positions:
            raise ValueError(f"{past + T} positions exceed max_positions={self.max_positions}")
        if attention_mask is None and not self.causal and self.pad_token_id is not None:
            attention_mask = tokens != self.pad_token_id
        if attention_mask is not None:
            if attention_mask.is_floating_point():
                raise ValueError(
                    "attention_mask must be bool (True = real token), not an additive float mask"
                )
            attention_mask = attention_mask.bool()

        x = self.token_embedding(tokens)
        if self.positions == "sinusoidal":
            # Vaswani et al. §3.4 scale the embeddings by sqrt(dim); with the 0.02 init this puts
            # tokens (std 0.02·sqrt(dim)) and the table (rms 1/sqrt(2)) on comparable scales
            x = x * math.sqrt(self.dim) + self.position_table[past : past + T]
        elif self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(past, past + T, device=tokens.device))
        x = self.dropout(x)

        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, attention_mask, None if kv_cache is None else kv_cache[i])
            new_cache.append(kv)
        x = self.norm(x)
        return (x, new_cache) if return_cache else x

    def layer_groups(self) -> list[nn.Module]:
        embeddings = [self.token_embedding]
        if self.position_embedding is not None:
            embeddings.append(self.position_embedding)
        return [nn.ModuleList(embeddings), *self.blocks, self.norm]

    def num_params(self, non_embedding: bool = True) -> int:
        """Analytic parameter count; ``non_embedding`` leaves out token and position embeddings,
        the N of Kaplan et al. 2020 (here exact: biases and LayerNorms included)."""
        d, f = self.dim, self.hidden_dim
        per_block = 2 * (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        n = self.num_layers * per_block + 2 * d  # blocks and the final LayerNorm
        if not non_embedding:
            n += self.vocab_size * d + (
                self.max_positions * d if self.position_embedding is not None else 0
            )
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward) per token at context ``seq_len``:
        ``6N + 12·L·H·Q·T`` (Kaplan et al. 2020; PaLM appendix B), the basis of MFU."""
        head_dim = self.dim // self.num_heads
        return 6 * self.num_params() + 12 * self.num_layers * self.num_heads * head_dim * seq_len
