"""Hugging Face architectures as configurations of ptft's Transformer, mapped exactly.

Each :class:`Family` turns a Hugging Face ``config.json`` (a plain dict: read as data, nothing
of the file is called) into the keyword arguments of :class:`ptft.nn.transformer.Transformer`
and back, and renames and reshapes the weights both ways:

* ``GPT2``: learned positions, pre-LN, GELU-tanh, ``Conv1D`` weights stored transposed;
* ``Bert``: post-LN blocks, an embedding LayerNorm, segment embeddings, the MLM head's
  transform and output bias;
* ``Llama``: RMSNorm, SwiGLU, grouped-query attention, RoPE (Hugging Face rotates the two
  halves of a head, ptft rotates neighbouring pairs: q and k rows are permuted on the way in
  and back on the way out, which leaves every q·k unchanged), no biases, tied or untied head;
* ``GPTNeoX`` (export of ptft's own RoPE models: LayerNorm, GELU, biases) and
  ``MegatronBert`` (export of ptft's pre-LN bidirectional encoders).

A setting a family cannot express raises ``Unmappable`` naming the field.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ptft.errors import ConfigError

TRANSFORMER = "ptft.nn.transformer.Transformer"
ACTIVATIONS_IN = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
ACTIVATIONS_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
State = dict[str, Tensor]


class Unmappable(ConfigError):
    """A config field (or a ptft setting) that the target architecture cannot express."""


def _activation(value: Any, field: str) -> str:
    if value not in ACTIVATIONS_IN:
        raise Unmappable(f"{field}={value!r} has no ptft activation ({', '.join(ACTIVATIONS_IN)})")
    return ACTIVATIONS_IN[value]


def _require(cfg: dict[str, Any], field: str, allowed: Any, default: Any = None) -> None:
    value = cfg.get(field, default)
    ok = value in allowed if isinstance(allowed, tuple) else value == allowed
    if not ok:
        raise Unmappable(f"config.json: {field}={value!r} is not supported (expected {allowed!r})")


def rope_theta(cfg: dict[str, Any]) -> float:
    """The RoPE base of a config: ``rope_parameters.rope_theta`` (transformers 5) or
    ``rope_theta``; any rope scaling is refused (ptft's tables are unscaled)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", None):
        raise Unmappable(f"config.json: rope_type={kind!r} (scaled RoPE) is not supported")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def rope_rows(head_dim: int, to_ptft: bool) -> Tensor:
    """Row order taking a head's q/k rows from Hugging Face's half split (pair ``i, i + d/2``)
    to ptft's interleaved pairs (``2i, 2i + 1``), or back."""
    half = head_dim // 2
    hf_index = torch.tensor([p // 2 + (p % 2) * half for p in range(head_dim)])
    return hf_index if to_ptft else torch.argsort(hf_index)


def permute_heads(weight: Tensor, num_heads: int, rows: Tensor) -> Tensor:
    """Reorder the rows of every head of a q or k projection (weight or bias)."""
    head_dim = weight.shape[0] // num_heads
    return weight.reshape(num_heads, head_dim, *weight.shape[1:])[:, rows].reshape(weight.shape)


class Family:
    """One Hugging Face architecture family: configs and weights both ways."""

    #: ``model_type`` in config.json
    model_type: ClassVar[str]
    #: the Hugging Face class of a causal or masked LM, and of the bare model
    lm_class: ClassVar[str]
    base_class: ClassVar[str]
    #: the attribute holding the bare model inside ``lm_class`` (its keys' prefix)
    prefix: ClassVar[str]

    @classmethod
    def strip(cls, state: State) -> tuple[State, State]:
        """The bare model's tensors without the prefix, and the rest (head tensors)."""
        base, rest = {}, {}
        for key, value in state.items():
            if key.startswith(cls.prefix + "."):
                base[key[len(cls.prefix) + 1 :]] = value
            else:
                rest[key] = value
        return base, rest

    @classmethod
    def to_ptft(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def import_weights(cls, cfg: dict[str, Any], state: State) -> tuple[State, list[str]]:
        """ptft backbone weights from a Hugging Face state dict, and the keys left unused."""
        raise NotImplementedError

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        raise NotImplementedError


class _Renamer:
    """Moves tensors from one state dict to another by name, remembering what it took."""

    def __init__(self, state: State) -> None:
        self.state, self.taken = state, set()

    def __call__(self, key: str) -> Tensor:
        if key not in self.state:
            raise ConfigError(f"the weights have no tensor {key!r}; is the file complete?")
        self.taken.add(key)
        return self.state[key]

    def get(self, key: str) -> Tensor | None:
        return self(key) if key in self.state else None

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.taken)


def _base_kwargs(**kwargs: Any) -> dict[str, Any]:
    return {"_target_": TRANSFORMER, "dropout": 0.0, **kwargs}


class GPT2(Family):
    model_type = "gpt2"
    lm_class, base_class, prefix = "GPT2LMHeadModel", "GPT2Model", "transformer"

    @classmethod
    def to_ptft(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        for field, value in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
            ("add_cross_attention", False),
        ):
            _require(cfg, field, value, default=value)
        d = cfg["n_embd"]
        return _base_kwargs(
            vocab_size=cfg["vocab_size"],
            dim=d,
            num_layers=cfg["n_layer"],
            num_heads=cfg["n_head"],
            hidden_dim=cfg.get("n_inner") or 4 * d,
            max_positions=cfg["n_positions"],
            positions="learned",
            causal=True,
            pad_token_id=None,
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            activation=_activation(
                cfg.get("activation_function", "gelu_new"), "activation_function"
            ),
            lm_head="tied" if cfg.get("tie_word_embeddings", True) else "untied",
        )

    @classmethod
    def import_weights(cls, cfg: dict[str, Any], state: State) -> tuple[State, list[str]]:
        base, rest = cls.strip(state)
        if not base:  # a bare GPT2Model: no prefix
            base, rest = state, {}
        get, out = _Renamer(base), {}
        out["token_embedding.weight"] = get("wte.weight")
        out["position_embedding.weight"] = get("wpe.weight")
        for i in range(cfg["n_layer"]):
            h, b = f"h.{i}.", f"blocks.{i}."
            for mine, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[b + mine + ".weight"] = get(h + theirs + ".weight")
                out[b + mine + ".bias"] = get(h + theirs + ".bias")
            for mine, theirs in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):  # Conv1D keeps (in, out): transpose to Linear's (out, in)
                out[b + mine + ".weight"] = get(h + theirs + ".weight").t().contiguous()
                out[b + mine + ".bias"] = get(h + theirs + ".bias")
        out["norm.weight"], out["norm.bias"] = get("ln_f.weight"), get("ln_f.bias")
        unused = [k for k in get.unused() if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        return out, unused + _take_head(cfg, rest, out, tied_default=True)

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        activation = bb.get("activation", "gelu")
        return {
            "model_type": "gpt2",
            "vocab_size": bb["vocab_size"],
            "n_embd": bb["dim"],
            "n_layer": bb["num_layers"],
            "n_head": bb["num_heads"],
            "n_inner": _hidden_dim(bb),
            "n_positions": bb["max_positions"],
            "activation_function": ACTIVATIONS_OUT[activation],
            "layer_norm_epsilon": bb.get("norm_eps", 1e-5),
            "tie_word_embeddings": bb.get("lm_head", "tied") == "tied",
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        out: State = {}
        p = cls.prefix + "."
        scale = 1.0
        if bb.get("positions", "sinusoidal") == "sinusoidal":
            # x = sqrt(d)·E[t] + PE[p] in ptft: GPT-2 adds wte[t] + wpe[p], so wte = sqrt(d)·E
            # and the table is wpe; the tied head then scores sqrt(d) too large, which ln_f
            # (whose output only the head reads) takes back
            from ptft.nn.positions import sinusoidal

            scale = math.sqrt(bb["dim"])
            out[p + "wpe.weight"] = sinusoidal(bb["max_positions"], bb["dim"])
        else:
            out[p + "wpe.weight"] = state["position_embedding.weight"]
        out[p + "wte.weight"] = state["token_embedding.weight"] * scale
        for i in range(bb["num_layers"]):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for mine, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[h + theirs + ".weight"] = state[b + mine + ".weight"]
                out[h + theirs + ".bias"] = state[b + mine + ".bias"]
            for mine, theirs in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                out[h + theirs + ".weight"] = state[b + mine + ".weight"].t().contiguous()
                out[h + theirs + ".bias"] = state[b + mine + ".bias"]
        out[p + "ln_f.weight"] = state["norm.weight"] / scale
        out[p + "ln_f.bias"] = state["norm.bias"] / scale
        if with_head and bb.get("lm_head", "tied") == "untied":
            out["lm_head.weight"] = state["lm_output.weight"]
        return out


class Bert(Family):
    model_type = "bert"
    lm_class, base_class, prefix = "BertForMaskedLM", "BertModel", "bert"

    @classmethod
    def to_ptft(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        _require(cfg, "position_embedding_type", ("absolute", None), "absolute")
        _require(cfg, "is_decoder", False, False)
        _require(cfg, "add_cross_attention", False, False)
        act = _activation(cfg.get("hidden_act", "gelu"), "hidden_act")
        return _base_kwargs(
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            hidden_dim=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"],
            positions="learned",
            causal=False,
            pad_token_id=cfg.get("pad_token_id", 0),
            norm_eps=cfg.get("layer_norm_eps", 1e-12),
            prenorm=False,
            activation=act,
            embedding_norm=True,
            token_types=cfg.get("type_vocab_size", 2),
            lm_head="bert",
        )

    @classmethod
    def import_weights(cls, cfg: dict[str, Any], state: State) -> tuple[State, list[str]]:
        base, rest = cls.strip(state)
        if not base:
            base, rest = state, {}
        get, out = _Renamer(base), {}
        e = "embeddings."
        out["token_embedding.weight"] = get(e + "word_embeddings.weight")
        out["position_embedding.weight"] = get(e + "position_embeddings.weight")
        out["token_type_embedding.weight"] = get(e + "token_type_embeddings.weight")
        out["embedding_norm.weight"] = get(e + "LayerNorm.weight")
        out["embedding_norm.bias"] = get(e + "LayerNorm.bias")
        for i in range(cfg["num_hidden_layers"]):
            h, b = f"encoder.layer.{i}.", f"blocks.{i}."
            for part in ("weight", "bias"):
                out[f"{b}attn.qkv.{part}"] = torch.cat(
                    [get(f"{h}attention.self.{n}.{part}") for n in ("query", "key", "value")]
                )
                for mine, theirs in BERT_LAYER:
                    out[f"{b}{mine}.{part}"] = get(f"{h}{theirs}.{part}")
        unused = get.unused()  # the pooler, which no ptft model reads
        head = _Renamer(rest)
        t = "cls.predictions.transform."
        if t + "dense.weight" in rest:
            for mine, theirs in (("0", "dense"), ("2", "LayerNorm")):
                for part in ("weight", "bias"):
                    out[f"lm_transform.{mine}.{part}"] = head(f"{t}{theirs}.{part}")
            bias = head.get("cls.predictions.bias")
            decoder_bias = head.get("cls.predictions.decoder.bias")
            out["lm_bias.bias"] = bias if bias is not None else decoder_bias
            head.get("cls.predictions.decoder.weight")  # tied to the word embeddings
        return out, unused + head.unused()

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        return {
            **_bert_config(bb, "bert", type_vocab_size=bb.get("token_types", 0)),
            "tie_word_embeddings": True,
        }

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        p = cls.prefix + "." if with_head else ""
        e = p + "embeddings."
        out = {
            e + "word_embeddings.weight": state["token_embedding.weight"],
            e + "position_embeddings.weight": state["position_embedding.weight"],
            e + "token_type_embeddings.weight": state["token_type_embedding.weight"],
            e + "LayerNorm.weight": state["embedding_norm.weight"],
            e + "LayerNorm.bias": state["embedding_norm.bias"],
        }
        out.update(_bert_layers(bb, state, p, BERT_LAYER))
        if with_head:
            t = "cls.predictions.transform."
            for mine, theirs in (("0", "dense"), ("2", "LayerNorm")):
                for part in ("weight", "bias"):
                    out[f"{t}{theirs}.{part}"] = state[f"lm_transform.{mine}.{part}"]
            out["cls.predictions.bias"] = state["lm_bias.bias"]
        return out


class Llama(Family):
    model_type = "llama"
    lm_class, base_class, prefix = "LlamaForCausalLM", "LlamaModel", "model"

    @classmethod
    def to_ptft(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or d // heads
        if head_dim * heads != d:
            raise Unmappable(
                f"config.json: head_dim={head_dim} × num_attention_heads={heads} != "
                f"hidden_size={d} (ptft's attention splits hidden_size among the heads)"
            )
        attention_bias, mlp_bias = cfg.get("attention_bias", False), cfg.get("mlp_bias", False)
        if attention_bias != mlp_bias:
            raise Unmappable(
                f"config.json: attention_bias={attention_bias} with mlp_bias={mlp_bias} "
                "(ptft's bias switch covers both)"
            )
        return _base_kwargs(
            vocab_size=cfg["vocab_size"],
            dim=d,
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            hidden_dim=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"],
            positions="rope",
            rope_theta=rope_theta(cfg),
            causal=True,
            pad_token_id=None,
            norm="rmsnorm",
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            activation=_activation(cfg.get("hidden_act", "silu"), "hidden_act"),
            gated_mlp=True,
            bias=bool(attention_bias),
            lm_head="tied" if cfg.get("tie_word_embeddings", False) else "untied",
        )

    @classmethod
    def import_weights(cls, cfg: dict[str, Any], state: State) -> tuple[State, list[str]]:
        base, rest = cls.strip(state)
        if not base:
            base, rest = state, {}
        get, out = _Renamer(base), {}
        heads = cfg["num_attention_heads"]
        kv_heads = cfg.get("num_key_value_heads") or heads
        rows = rope_rows(cfg["hidden_size"] // heads, to_ptft=True)
        bias = cfg.get("attention_bias", False)
        out["token_embedding.weight"] = get("embed_tokens.weight")
        for i in range(cfg["num_hidden_layers"]):
            h, b = f"layers.{i}.", f"blocks.{i}."
            for part in ("weight", "bias") if bias else ("weight",):
                q = permute_heads(get(f"{h}self_attn.q_proj.{part}"), heads, rows)
                k = permute_heads(get(f"{h}self_attn.k_proj.{part}"), kv_heads, rows)
                out[f"{b}attn.qkv.{part}"] = torch.cat([q, k, get(f"{h}self_attn.v_proj.{part}")])
                for mine, theirs in (
                    ("attn.proj", "self_attn.o_proj"),
                    ("mlp.gate", "mlp.gate_proj"),
                    ("mlp.fc", "mlp.up_proj"),
                    ("mlp.proj", "mlp.down_proj"),
                ):
                    out[f"{b}{mine}.{part}"] = get(f"{h}{theirs}.{part}")
            out[b + "ln1.weight"] = get(h + "input_layernorm.weight")
            out[b + "ln2.weight"] = get(h + "post_attention_layernorm.weight")
        out["norm.weight"] = get("norm.weight")
        unused = [k for k in get.unused() if not k.endswith("rotary_emb.inv_freq")]
        return out, unused + _take_head(cfg, rest, out, tied_default=False)

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_type": "llama",
            **_sizes(bb),
            "num_key_value_heads": bb.get("num_kv_heads") or bb["num_heads"],
            "head_dim": bb["dim"] // bb["num_heads"],
            "rms_norm_eps": bb.get("norm_eps", 1e-5),
            "hidden_act": ACTIVATIONS_OUT[bb.get("activation", "gelu")],
            "attention_bias": bool(bb.get("bias", True)),
            "mlp_bias": bool(bb.get("bias", True)),
            "rope_parameters": {"rope_type": "default", "rope_theta": bb.get("rope_theta", 1e4)},
            "tie_word_embeddings": bb.get("lm_head", "tied") == "tied",
            "attention_dropout": 0.0,
        }

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        p = cls.prefix + "."
        heads = bb["num_heads"]
        kv_heads = bb.get("num_kv_heads") or heads
        head_dim = bb["dim"] // heads
        rows = rope_rows(head_dim, to_ptft=False)
        out = {p + "embed_tokens.weight": state["token_embedding.weight"]}
        for i in range(bb["num_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            for part in ("weight", "bias") if bb.get("bias", True) else ("weight",):
                q, k, v = state[f"{b}attn.qkv.{part}"].split(
                    (bb["dim"], kv_heads * head_dim, kv_heads * head_dim)
                )
                out[f"{h}self_attn.q_proj.{part}"] = permute_heads(q, heads, rows)
                out[f"{h}self_attn.k_proj.{part}"] = permute_heads(k, kv_heads, rows)
                out[f"{h}self_attn.v_proj.{part}"] = v
                for mine, theirs in (
                    ("attn.proj", "self_attn.o_proj"),
                    ("mlp.gate", "mlp.gate_proj"),
                    ("mlp.fc", "mlp.up_proj"),
                    ("mlp.proj", "mlp.down_proj"),
                ):
                    out[f"{h}{theirs}.{part}"] = state[f"{b}{mine}.{part}"]
            out[h + "input_layernorm.weight"] = state[b + "ln1.weight"]
            out[h + "post_attention_layernorm.weight"] = state[b + "ln2.weight"]
        out[p + "norm.weight"] = state["norm.weight"]
        if with_head and bb.get("lm_head", "tied") == "untied":
            out["lm_head.weight"] = state["lm_output.weight"]
        return out


class GPTNeoX(Family):
    """ptft's own RoPE models (pre-LN LayerNorm, GELU, biases): GPT-NeoX with the rotation on
    the whole head and sequential (not parallel) residuals."""

    model_type = "gpt_neox"
    lm_class, base_class, prefix = "GPTNeoXForCausalLM", "GPTNeoXModel", "gpt_neox"

    @classmethod
    def to_ptft(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        _require(cfg, "use_parallel_residual", False, True)
        params = cfg.get("rope_parameters") or {}
        fraction = params.get("partial_rotary_factor", cfg.get("rotary_pct", 1.0))
        if fraction != 1.0:
            raise Unmappable(
                f"config.json: partial_rotary_factor={fraction} (ptft rotates whole heads)"
            )
        bias = cfg.get("attention_bias", True)
        if not bias:
            raise Unmappable("config.json: attention_bias=false (ptft's GPT-NeoX keeps biases)")
        return _base_kwargs(
            vocab_size=cfg["vocab_size"],
            dim=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            hidden_dim=cfg["intermediate_size"],
            max_positions=cfg["max_position_embeddings"],
            positions="rope",
            rope_theta=rope_theta(cfg),
            causal=True,
            pad_token_id=None,
            norm_eps=cfg.get("layer_norm_eps", 1e-5),
            activation=_activation(cfg.get("hidden_act", "gelu"), "hidden_act"),
            lm_head="tied" if cfg.get("tie_word_embeddings", False) else "untied",
        )

    @classmethod
    def _qkv_rows(cls, heads: int, head_dim: int) -> Tensor:
        """NeoX fuses q, k, v per head (``[h0: q k v, h1: q k v, …]``); ptft as three blocks
        (``[q: h0 h1 …, k: …, v: …]``): the index of each ptft row in NeoX's layout."""
        idx = torch.arange(3 * heads * head_dim).view(heads, 3, head_dim)
        return idx.transpose(0, 1).reshape(-1)

    @classmethod
    def import_weights(cls, cfg: dict[str, Any], state: State) -> tuple[State, list[str]]:
        base, rest = cls.strip(state)
        if not base:
            base, rest = state, {}
        get, out = _Renamer(base), {}
        heads, d = cfg["num_attention_heads"], cfg["hidden_size"]
        head_dim = d // heads
        order = cls._qkv_rows(heads, head_dim)
        rows = rope_rows(head_dim, to_ptft=True)
        out["token_embedding.weight"] = get("embed_in.weight")
        for i in range(cfg["num_hidden_layers"]):
            h, b = f"layers.{i}.", f"blocks.{i}."
            for part in ("weight", "bias"):
                q, k, v = get(f"{h}attention.query_key_value.{part}")[order].split(d)
                qkv = [permute_heads(q, heads, rows), permute_heads(k, heads, rows), v]
                out[f"{b}attn.qkv.{part}"] = torch.cat(qkv)
                for mine, theirs in (
                    ("attn.proj", "attention.dense"),
                    ("mlp.fc", "mlp.dense_h_to_4h"),
                    ("mlp.proj", "mlp.dense_4h_to_h"),
                    ("ln1", "input_layernorm"),
                    ("ln2", "post_attention_layernorm"),
                ):
                    out[f"{b}{mine}.{part}"] = get(f"{h}{theirs}.{part}")
        out["norm.weight"] = get("final_layer_norm.weight")
        out["norm.bias"] = get("final_layer_norm.bias")
        unused = [k for k in get.unused() if not k.endswith(("inv_freq", ".masked_bias"))]
        # transformers 5 names the head lm_head; earlier versions embed_out
        return out, unused + _take_head(
            cfg, rest, out, False, ("lm_head.weight", "embed_out.weight")
        )

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        return {
            "model_type": "gpt_neox",
            **_sizes(bb),
            "layer_norm_eps": bb.get("norm_eps", 1e-5),
            "hidden_act": ACTIVATIONS_OUT[bb.get("activation", "gelu")],
            "use_parallel_residual": False,
            "attention_bias": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": bb.get("rope_theta", 1e4),
                "partial_rotary_factor": 1.0,
            },
            "tie_word_embeddings": bb.get("lm_head", "tied") == "tied",
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
        }

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        p = cls.prefix + "."
        heads, d = bb["num_heads"], bb["dim"]
        head_dim = d // heads
        back = torch.argsort(cls._qkv_rows(heads, head_dim))
        rows = rope_rows(head_dim, to_ptft=False)
        out = {p + "embed_in.weight": state["token_embedding.weight"]}
        for i in range(bb["num_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            for part in ("weight", "bias"):
                q, k, v = state[f"{b}attn.qkv.{part}"].split(d)
                qkv = torch.cat([permute_heads(q, heads, rows), permute_heads(k, heads, rows), v])
                out[f"{h}attention.query_key_value.{part}"] = qkv[back]
                for mine, theirs in (
                    ("attn.proj", "attention.dense"),
                    ("mlp.fc", "mlp.dense_h_to_4h"),
                    ("mlp.proj", "mlp.dense_4h_to_h"),
                    ("ln1", "input_layernorm"),
                    ("ln2", "post_attention_layernorm"),
                ):
                    out[f"{h}{theirs}.{part}"] = state[f"{b}{mine}.{part}"]
        out[p + "final_layer_norm.weight"] = state["norm.weight"]
        out[p + "final_layer_norm.bias"] = state["norm.bias"]
        if with_head and bb.get("lm_head", "tied") == "untied":
            out["lm_head.weight"] = state["lm_output.weight"]
        return out


class MegatronBert(Family):
    """ptft's own bidirectional encoders (pre-LN) as ``MegatronBertModel``: the encoder's
    features exactly; ptft's masked-LM head (the tied embedding alone) has no Hugging Face
    counterpart (every MLM head there has a transform), so only the encoder goes."""

    model_type = "megatron-bert"
    lm_class, base_class, prefix = "MegatronBertModel", "MegatronBertModel", "bert"

    @classmethod
    def from_ptft(cls, bb: dict[str, Any]) -> dict[str, Any]:
        return _bert_config(bb, "megatron-bert", type_vocab_size=1)

    @classmethod
    def export_weights(cls, bb: dict[str, Any], state: State, with_head: bool) -> State:
        d = bb["dim"]
        scale = 1.0
        if bb.get("positions", "sinusoidal") == "sinusoidal":
            from ptft.nn.positions import sinusoidal

            scale = math.sqrt(d)
            positions = sinusoidal(bb["max_positions"], d)
        else:
            positions = state["position_embedding.weight"]
        out = {
            "embeddings.word_embeddings.weight": state["token_embedding.weight"] * scale,
            "embeddings.position_embeddings.weight": positions,
            # one segment whose embedding adds nothing
            "embeddings.token_type_embeddings.weight": torch.zeros(1, d),
            "encoder.ln.weight": state["norm.weight"],
            "encoder.ln.bias": state["norm.bias"],
            # MegatronBertModel always has BERT's pooler (tanh of a dense layer on the first
            # token), which ptft's encoder lacks: identity weights, so nothing loads as new
            "pooler.dense.weight": torch.eye(d),
            "pooler.dense.bias": torch.zeros(d),
        }
        out.update(_bert_layers(bb, state, "", MEGATRON_LAYER))
        return out


#: ptft block → BERT layer names (post-LN: each norm after its residual)
BERT_LAYER = (
    ("attn.proj", "attention.output.dense"),
    ("ln1", "attention.output.LayerNorm"),
    ("mlp.fc", "intermediate.dense"),
    ("mlp.proj", "output.dense"),
    ("ln2", "output.LayerNorm"),
)
#: ptft block → MegatronBERT layer names (pre-LN: each norm before its sublayer)
MEGATRON_LAYER = (
    ("ln1", "attention.ln"),
    ("attn.proj", "attention.output.dense"),
    ("ln2", "ln"),
    ("mlp.fc", "intermediate.dense"),
    ("mlp.proj", "output.dense"),
)


def _sizes(bb: dict[str, Any]) -> dict[str, int]:
    """The ``config.json`` sizes every exported family names alike, from ptft's backbone
    config."""
    return {
        "vocab_size": bb["vocab_size"],
        "hidden_size": bb["dim"],
        "num_hidden_layers": bb["num_layers"],
        "num_attention_heads": bb["num_heads"],
        "intermediate_size": _hidden_dim(bb),
        "max_position_embeddings": bb["max_positions"],
    }


def _bert_config(bb: dict[str, Any], model_type: str, type_vocab_size: int) -> dict[str, Any]:
    """The ``config.json`` fields that BERT and MegatronBERT share, from ptft's backbone
    config (no dropout: the export reproduces ptft's features)."""
    return {
        "model_type": model_type,
        **_sizes(bb),
        "hidden_act": ACTIVATIONS_OUT[bb.get("activation", "gelu")],
        "layer_norm_eps": bb.get("norm_eps", 1e-5),
        "type_vocab_size": type_vocab_size,
        "pad_token_id": bb.get("pad_token_id"),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def _bert_layers(
    bb: dict[str, Any], state: State, prefix: str, names: tuple[tuple[str, str], ...]
) -> State:
    """The encoder layers of a BERT-layout model (``{prefix}encoder.layer.N.``): ptft's fused
    qkv split into query, key and value, the other tensors renamed by ``names``."""
    out: State = {}
    for i in range(bb["num_layers"]):
        h, b = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{part}"].split(bb["dim"])
            for name, t in (("query", q), ("key", k), ("value", v)):
                out[f"{h}attention.self.{name}.{part}"] = t
            for mine, theirs in names:
                out[f"{h}{theirs}.{part}"] = state[f"{b}{mine}.{part}"]
    return out


def _take_head(
    cfg: dict[str, Any],
    rest: State,
    out: State,
    tied_default: bool,
    names: tuple[str, ...] = ("lm_head.weight",),
) -> list[str]:
    """Move an untied LM head (``tie_word_embeddings`` false) into the backbone's
    ``lm_output``; a tied one is the embedding and is dropped. Returns the keys left unused."""
    heads = [rest.pop(n) for n in names if n in rest]
    if not cfg.get("tie_word_embeddings", tied_default):
        if not heads:
            raise ConfigError("config.json says the head is untied but there is no lm_head")
        out["lm_output.weight"] = heads[0]
    return sorted(rest)


def _hidden_dim(bb: dict[str, Any]) -> int:
    hidden = bb.get("hidden_dim")
    return int(hidden) if hidden else int(bb.get("mlp_ratio", 4) * bb["dim"])


#: families that ``model.pretrained=<Hugging Face directory>`` reads, by ``model_type``
IMPORTS: dict[str, type[Family]] = {f.model_type: f for f in (GPT2, Bert, Llama, GPTNeoX)}


def export_family(bb: dict[str, Any]) -> type[Family]:
    """The Hugging Face family that computes exactly what a ptft Transformer config does."""
    get = bb.get
    causal, positions = bool(get("causal", True)), get("positions", "sinusoidal")
    norm, prenorm, gated = get("norm", "layernorm"), get("prenorm", True), get("gated_mlp", False)
    bias, act = get("bias", True), get("activation", "gelu")
    kv = get("num_kv_heads") or get("num_heads")
    plain = norm == "layernorm" and not gated and bias and kv == get("num_heads")
    plain = plain and not get("embedding_norm", False) and not get("token_types", 0)
    if not prenorm:
        if positions == "learned" and not causal and norm == "layernorm" and not gated and bias:
            if get("embedding_norm", False) and get("lm_head", "tied") == "bert":
                return Bert
        raise Unmappable(
            "a post-LN model exports only as BERT (bidirectional, learned positions, an embedding "
            "LayerNorm and BERT's MLM head)"
        )
    if causal and positions in ("learned", "sinusoidal") and plain:
        if positions == "sinusoidal" and get("lm_head", "tied") != "tied":
            raise Unmappable("a sinusoidal model with an untied head has no exact GPT-2 form")
        return GPT2
    if causal and positions == "rope":
        if norm == "rmsnorm" and gated and act == "silu":
            return Llama
        if plain:
            return GPTNeoX
        raise Unmappable(
            "a RoPE model exports as Llama (norm=rmsnorm, gated_mlp=true, activation=silu) or "
            "GPT-NeoX (layernorm, an ungated MLP, biases, no grouped-query attention)"
        )
    if not causal and positions in ("learned", "sinusoidal") and plain:
        return MegatronBert
    raise Unmappable(
        f"no Hugging Face architecture computes this Transformer exactly (causal={causal}, "
        f"positions={positions}, norm={norm}, gated_mlp={gated}, bias={bias})"
    )
