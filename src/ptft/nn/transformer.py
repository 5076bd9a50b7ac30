"""A Transformer backbone for tokens ``(B, T)`` → features ``(B, T, dim)``, one config-driven
model for the GPT-2, BERT and Llama families.

The defaults are ptft's own: a pre-LayerNorm GPT (Radford et al. 2019) with GELU, biases and
GPT-2's initialisation. The same module serves a causal LM (``causal=True``) and a masked LM
(``causal=False``); the objective's head sits on top and scores with ``output_weight`` (the
token embedding unless ``lm_head="untied"``). Switches give the other families exactly:

* positions ``"sinusoidal"`` (Vaswani et al. 2017), ``"learned"`` (GPT-2, BERT) or ``"rope"``
  (Su et al. 2021; ``rope_theta`` its base, as Llama's config gives it);
* ``norm`` ``"layernorm"`` or ``"rmsnorm"`` (Llama), ``prenorm=False`` for BERT's post-LN blocks
  (then no final norm), ``embedding_norm`` for BERT's LayerNorm over the embeddings;
* ``activation`` and ``gated_mlp`` (SwiGLU: ``proj(silu(gate(x)) · fc(x))``, Shazeer 2020),
  ``hidden_dim`` for an MLP width that is no multiple of ``dim``, ``bias=False`` (Llama);
* ``num_kv_heads`` for grouped-query attention, ``token_types`` for BERT's segment embeddings;
* ``special_tokens``: the ids of the tokenizer's roles (``{"pad": 0, "eos": 3, …}``) when
  they are not ptft's fixed ones (an imported tokenizer), see
  :class:`ptft.data.tokenizer.SpecialTokens`;
* ``lm_head``: ``"tied"`` (the token embedding scores tokens), ``"untied"`` (a matrix of its
  own) or ``"bert"`` (BERT's transform: dense, activation, LayerNorm, then the tied embedding
  and a bias).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ptft.config.bounds import NonNegativeInt, PositiveFloat, PositiveInt, Probability
from ptft.nn.attention import KV, SelfAttention
from ptft.nn.backbone import Backbone
from ptft.nn.norms import NORMS, Norm, RMSNorm, make_norm
from ptft.nn.positions import Rotary, sinusoidal

#: one ``(keys, values)`` pair per block, each ``(B, H_kv, T_past, Dh)``
KVCache = list[KV]

POSITIONS = ("sinusoidal", "learned", "rope")
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # the exact (erf) GELU: BERT, ptft
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's gelu_new
    "relu": nn.ReLU,
    "silu": nn.SiLU,  # Llama's SwiGLU gate
}
LM_HEADS = ("tied", "untied", "bert")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """Linear → activation → Linear → dropout, applied to every position alike; gated
    (``gate``), the activation of one projection scales the other (GLU variants)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dropout: float,
        act: str = "gelu",
        gated: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=bias) if gated else None
        self.fc = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_activation(act)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc(x)) if self.gate is None else self.act(self.gate(x)) * self.fc(x)
        return self.dropout(self.proj(h))


class Bias(nn.Module):
    """A learned bias of ``size`` (BERT's output bias over the vocabulary), as a module so that
    layer groups can freeze it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class Block(nn.Module):
    """Pre-LN: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``; post-LN (BERT):
    ``LN(x + attn(x))``, then ``LN(x + mlp(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden_dim: int,
        dropout: float,
        causal: bool,
        rotary: Rotary | None,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        prenorm: bool = True,
        act: str = "gelu",
        gated: bool = False,
        bias: bool = True,
        num_kv_heads: int | None = None,
    ) -> None:
        super().__init__()
        self.prenorm = prenorm
        self.ln1 = make_norm(norm, dim, norm_eps)
        self.attn = SelfAttention(dim, num_heads, dropout, causal, rotary, num_kv_heads, bias)
        self.ln2 = make_norm(norm, dim, norm_eps)
        self.mlp = FeedForward(dim, hidden_dim, dropout, act, gated, bias)

    def forward(self, x: Tensor, key_mask: Tensor | None, kv_cache: KV | None) -> tuple[Tensor, KV]:
        if not self.prenorm:
            a, kv = self.attn(x, key_mask, kv_cache)
            x = self.ln1(x + a)
            return self.ln2(x + self.mlp(x)), kv
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
        norm: Norm = "layernorm",
        norm_eps: PositiveFloat = 1e-5,
        prenorm: bool = True,
        activation: Activation = "gelu",
        gated_mlp: bool = False,
        hidden_dim: PositiveInt | None = None,
        bias: bool = True,
        num_kv_heads: PositiveInt | None = None,
        embedding_norm: bool = False,
        token_types: NonNegativeInt = 0,
        rope_theta: PositiveFloat = 10000.0,
        lm_head: Literal["tied", "untied", "bert"] = "tied",
        special_tokens: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1 or not 1 <= input_shape[0] <= max_positions:
            raise ValueError(
                f"transformer backbone needs token inputs of shape (T,) with 1 <= T <= "
                f"max_positions={max_positions}, got input_shape={list(input_shape)} "
                "(the data's sequence length: shorten it)"
            )
        for name, value, choices in (
            ("positions", positions, POSITIONS),
            ("norm", norm, NORMS),
            ("activation", activation, tuple(ACTIVATIONS)),
            ("lm_head", lm_head, LM_HEADS),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r}; choose one of {', '.join(choices)}")
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
        hidden_dim = int(mlp_ratio * dim) if hidden_dim is None else hidden_dim
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
        self.norm_kind, self.prenorm, self.gated_mlp, self.bias = norm, prenorm, gated_mlp, bias
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.lm_head_kind = lm_head
        #: the roles of the vocabulary's special ids (pad, eos, mask, …): data, kept with the
        #: embedding whose rows they index, so every handoff and checkpoint carries them
        self.special_tokens = dict(special_tokens) if special_tokens else None
        self.out_dim = dim

        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = (
            nn.Embedding(max_positions, dim) if positions == "learned" else None
        )
        if token_types:
            self.token_type_embedding = nn.Embedding(token_types, dim)
        if positions == "sinusoidal":
            # a pure function of the config: kept out of the state dict
            self.register_buffer("position_table", sinusoidal(max_positions, dim), persistent=False)
        if embedding_norm:
            self.embedding_norm = make_norm(norm, dim, norm_eps)
        # one rotary table shared by every block (buffers only, no parameters)
        rotary = (
            Rotary(dim // num_heads, max_positions, rope_theta) if positions == "rope" else None
        )
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads,
                hidden_dim,
                dropout,
                causal,
                rotary,
                norm,
                norm_eps,
                prenorm,
                activation,
                gated_mlp,
                bias,
                num_kv_heads,
            )
            for _ in range(num_layers)
        )
        # post-LN blocks end in a norm already (BERT has no final one)
        self.norm = make_norm(norm, dim, norm_eps) if prenorm else nn.Identity()
        if lm_head == "untied":
            self.lm_output = nn.Linear(dim, vocab_size, bias=False)
        elif lm_head == "bert":
            self.lm_transform = nn.Sequential(
                nn.Linear(dim, dim), make_activation(activation), nn.LayerNorm(dim, norm_eps)
            )
            self.lm_bias = Bias(vocab_size)
        self.reset_parameters()

    @property
    def output_weight(self) -> nn.Parameter:
        """The ``(vocab, dim)`` matrix that scores tokens: the token embedding, unless untied."""
        untied = self.lm_head_kind == "untied"
        return self.lm_output.weight if untied else self.token_embedding.weight

    def lm_features(self, features: Tensor) -> Tensor:
        """What the LM head's matrix reads: the features, through BERT's transform if any."""
        return self.lm_transform(features) if self.lm_head_kind == "bert" else features

    def lm_logits_bias(self) -> Tensor | None:
        """BERT's output bias over the vocabulary, or None."""
        return self.lm_bias.bias if self.lm_head_kind == "bert" else None

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, and the projections that write into
        the residual stream at std 0.02/sqrt(2L), so the stream's variance does not grow with
        depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
        if self.lm_head_kind == "bert":
            nn.init.zeros_(self.lm_bias.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.num_layers))

    def forward(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_cache: bool = False,
        token_type_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Features ``(B, T, dim)`` of ``tokens (B, T)``, and the updated cache if asked.

        ``attention_mask`` is bool, True = real token, of shape ``(B, T_past + T)`` when a
        ``kv_cache`` of ``T_past`` positions is given (it covers the cached tokens too).
        The new tokens sit at positions ``T_past … T_past + T - 1``. ``token_type_ids``
        (segments, BERT) default to 0 for every token.
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
        if hasattr(self, "token_type_embedding"):
            if token_type_ids is None:
                x = x + self.token_type_embedding.weight[0]
            else:
                x = x + self.token_type_embedding(token_type_ids)
        if hasattr(self, "embedding_norm"):
            x = self.embedding_norm(x)
        x = self.dropout(x)

        new_cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, attention_mask, None if kv_cache is None else kv_cache[i])
            new_cache.append(kv)
        x = self.norm(x)
        return (x, new_cache) if return_cache else x

    def layer_groups(self) -> list[nn.Module]:
        """Embeddings (with their norm), each block, and the top: the final norm and the LM
        head's own layers (an untied output matrix, BERT's transform), if any."""
        embeddings = [self.token_embedding]
        for name in ("position_embedding", "token_type_embedding", "embedding_norm"):
            if getattr(self, name, None) is not None:
                embeddings.append(getattr(self, name))
        head = ("lm_output", "lm_transform", "lm_bias")
        top = [getattr(self, n) for n in head if hasattr(self, n)]
        return [
            nn.ModuleList(embeddings),
            *self.blocks,
            nn.ModuleList([self.norm, *top]) if top else self.norm,
        ]

    def num_params(self, non_embedding: bool = True) -> int:
        """Analytic parameter count; ``non_embedding`` leaves out the token, position and
        segment embeddings and an untied output matrix, the N of Kaplan et al. 2020 (here exact:
        biases and norms included)."""
        d, f, kv = self.dim, self.hidden_dim, self.num_kv_heads * (self.dim // self.num_heads)
        b = int(self.bias)
        norm = 2 * d if self.norm_kind == "layernorm" else d
        attention = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d
        mlp = (2 if self.gated_mlp else 1) * (d * f + b * f) + f * d + b * d
        n = self.num_layers * (2 * norm + attention + mlp)
        n += norm if self.prenorm else 0  # the final norm
        n += norm if hasattr(self, "embedding_norm") else 0
        n += d * d + d + 2 * d if self.lm_head_kind == "bert" else 0  # BERT's transform
        if not non_embedding:
            n += self.vocab_size * d
            n += self.max_positions * d if self.position_embedding is not None else 0
            if hasattr(self, "token_type_embedding"):
                n += self.token_type_embedding.weight.numel()
            n += self.vocab_size * d if self.lm_head_kind == "untied" else 0
            n += self.vocab_size if self.lm_head_kind == "bert" else 0
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward) per token at context ``seq_len``:
        ``6N + 12·L·H·Q·T`` (Kaplan et al. 2020; PaLM appendix B), the basis of MFU."""
        head_dim = self.dim // self.num_heads
        return 6 * self.num_params() + 12 * self.num_layers * self.num_heads * head_dim * seq_len
