"""Hugging Face model directories in and out of ptft, exactly (same logits, not "close").

In: a directory with ``config.json`` and ``model.safetensors`` (sharded too; a
``pytorch_model.bin`` only with ``torch.load(weights_only=True)``) and a tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``) reads as a ptft checkpoint
(:func:`read_hf_checkpoint`): a causal or masked LM whose backbone is ptft's Transformer
configured as the family (:mod:`ptft.interop.families`). So ``model.pretrained=DIR``,
``ptft-eval ckpt_path=DIR`` and ``ptft-generate ckpt_path=DIR`` take it as they take a ``.ckpt``.
``config.json`` is read as JSON: no code of the directory's is ever run (no
``trust_remote_code``).

Out: :func:`save` (``ptft-export format=hf``) writes the directory ``transformers`` loads with
``AutoModelForCausalLM`` / ``AutoModelForMaskedLM`` / ``AutoModel`` and ``AutoTokenizer``.

For notebooks: ``module = ptft.interop.hf.load(path)`` (a Hugging Face directory, a ptft
checkpoint, a run directory or a ``format=safetensors`` export) gives the LightningModule in
eval mode; ``module(ids)`` on token ids ``(B, T)`` returns the language-model logits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ptft.errors import ConfigError
from ptft.files import atomic_dir
from ptft.interop.families import IMPORTS, Family, Unmappable, export_family

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CAUSAL_LM = "ptft.objectives.causal_lm.CausalLM"
MASKED_LM = "ptft.objectives.masked_lm.MaskedLM"
#: the optimizer a module read from Hugging Face is built with (it is replaced by the run's)
PLACEHOLDER_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4}


def is_hf_dir(path: str | Path) -> bool:
    """A directory with a Hugging Face ``config.json`` (and not a ptft export)."""
    from ptft.interop.safetensors_dir import is_safetensors_dir

    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and not is_safetensors_dir(p)


def read_hf_config(directory: Path, key: str) -> tuple[dict[str, Any], type[Family]]:
    """``config.json`` as a dict and the family that maps it, or a one-line error."""
    try:
        cfg = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{key}={directory}: config.json does not read as JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{key}={directory}: config.json is not a JSON object")
    kind = cfg.get("model_type")
    if kind not in IMPORTS:
        raise ConfigError(
            f"{key}={directory}: model_type={kind!r} is not one ptft maps exactly "
            f"(supported: {', '.join(sorted(IMPORTS))})"
        )
    return cfg, IMPORTS[kind]


def read_hf_weights(directory: Path, key: str) -> dict[str, torch.Tensor]:
    """Every tensor of the directory: ``model.safetensors``, its shards, or (only as
    ``weights_only``) ``pytorch_model.bin``."""
    if (directory / SAFETENSORS).is_file() or (directory / SAFETENSORS_INDEX).is_file():
        from ptft.interop.safetensors_dir import safetensors_torch

        st = safetensors_torch(f"{key}={directory}")
        files = [directory / SAFETENSORS]
        if not files[0].is_file():
            index = json.loads((directory / SAFETENSORS_INDEX).read_text())
            names = sorted(set((index.get("weight_map") or {}).values()))
            files = [directory / n for n in names if "/" not in n and "\\" not in n]
            missing = [f.name for f in files if not f.is_file()]
            if not files or missing:
                raise ConfigError(
                    f"{key}={directory}: {SAFETENSORS_INDEX} names shards that are not there "
                    f"({', '.join(missing) or 'none listed'})"
                )
        state: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state.update(st.load_file(str(file)))
            except Exception as err:  # noqa: BLE001 -- safetensors raises its own types
                raise ConfigError(f"{key}={file} does not read as safetensors ({err})") from None
        return state
    if (directory / PICKLE_WEIGHTS).is_file():
        from ptft.checkpoints import read_checkpoint

        state = read_checkpoint(directory / PICKLE_WEIGHTS, key)  # weights_only=True
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"{key}={directory / PICKLE_WEIGHTS} is not a state dict of tensors")
        return state
    raise ConfigError(
        f"{key}={directory} has config.json but no weights ({SAFETENSORS}, its shards or "
        f"{PICKLE_WEIGHTS})"
    )


def hf_special_tokens(directory: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The roles of the model's special ids: from its tokenizer when it has one
    (``tokenizer_config.json``), else from ``config.json``'s ``*_token_id``."""
    from ptft.data.tokenizer import SpecialTokens, special_tokens_of

    if (directory / TOKENIZER_FILE).is_file() and (directory / TOKENIZER_CONFIG).is_file():
        return special_tokens_of(directory).to_dict()

    def first(value: Any) -> int | None:
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    roles = {r: first(cfg.get(f"{r}_token_id")) for r in ("pad", "bos", "eos", "sep")}
    return SpecialTokens(**roles, unk=None, mask=None, cls=None, native=False).to_dict()


def read_hf_checkpoint(path: str | Path, key: str = "model.pretrained") -> dict[str, Any]:
    """A Hugging Face directory as the checkpoint of a ptft causal LM (GPT-2, Llama, GPT-NeoX)
    or masked LM (BERT): the record, the hyperparameters and the weights a ``.ckpt`` has."""
    directory = Path(path)
    cfg, family = read_hf_config(directory, key)
    backbone = family.to_ptft(cfg)
    specials = hf_special_tokens(directory, cfg)
    backbone["special_tokens"] = specials
    if not backbone["causal"] and backbone.get("pad_token_id") is None:
        backbone["pad_token_id"] = specials.get("pad")
    weights, unused = family.import_weights(cfg, read_hf_weights(directory, key))
    if unused:
        log.info("%s: not used by ptft: %s", directory, ", ".join(unused[:8]))
    input_shape = [int(backbone["max_positions"])]
    module = CAUSAL_LM if backbone["causal"] else MASKED_LM
    state = {f"backbone.{k}": v for k, v in weights.items()}
    # the LM's head shares its matrix with the backbone (LanguageModel.lm_head)
    untied = backbone.get("lm_head") == "untied"
    state["lm_head.weight"] = weights["lm_output.weight" if untied else "token_embedding.weight"]
    checkpoint: dict[str, Any] = {
        "state_dict": state,
        "hyper_parameters": {
            "backbone": backbone,
            "input_shape": input_shape,
            "optimizer": dict(PLACEHOLDER_OPTIMIZER),
        },
        "ptft_backbone": {"config": backbone, "input_shape": input_shape, "module": module},
        "ptft_run": {"data": {}, "model": {}, "source": str(directory)},
        "ptft_hf": {"model_type": cfg["model_type"], "unused": unused},
    }
    if (directory / TOKENIZER_FILE).is_file():
        checkpoint["ptft_tokenizer"] = (directory / TOKENIZER_FILE).read_text()
    return checkpoint


def load(path: str | Path) -> L.LightningModule:
    """The ptft module in ``path`` (a Hugging Face directory, a ptft checkpoint or run
    directory, or a ``format=safetensors`` export), weights loaded, in eval mode."""
    from ptft.handoff import resolve_model_source
    from ptft.runs.load import load_run

    module, _ = load_run(resolve_model_source(path, "path"))
    return module.eval()


def save(
    source: L.LightningModule | str | Path,
    out_dir: str | Path,
    tokenizer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``source`` (a module, or anything :func:`load` reads) as a Hugging Face model
    directory ``out_dir`` (``ptft-export format=hf``); returns the directory.

    ``tokenizer`` is the ``tokenizer.json`` text for a module given directly (a checkpoint
    brings its own). LoRA adapters are merged into the weights first.
    """
    checkpoint = export_checkpoint(source, tokenizer)
    return write_hf(checkpoint, Path(out_dir), overwrite)


def export_checkpoint(
    source: L.LightningModule | str | Path, tokenizer: str | None = None
) -> dict[str, Any]:
    """A checkpoint-like dict (weights, hyperparameters, backbone record, tokenizer) of a module
    or of what ``source`` names, with LoRA adapters merged."""
    from ptft.handoff import resolve_model_source
    from ptft.runs.load import load_run

    if isinstance(source, L.LightningModule):
        module, record = source, {"tokenizer": tokenizer, "labels": None}
        if tokenizer is None and hasattr(module, "tokenizer_path"):
            path = module.tokenizer_path()
            record["tokenizer"] = Path(path).read_text() if path else None
    else:
        module, record = load_run(resolve_model_source(source, "ckpt_path"))
    from ptft.interop import lora

    if lora.is_lora(module):
        module = lora.merge_lora(module)
    checkpoint: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    module.on_save_checkpoint(checkpoint)  # the backbone record
    checkpoint["ptft_module"] = module
    if record.get("tokenizer"):
        checkpoint["ptft_tokenizer"] = record["tokenizer"]
    if record.get("labels"):
        checkpoint["ptft_labels"] = record["labels"]
    return checkpoint


def transformers_module(what: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{what} needs transformers: pip install 'ptft[hf]'") from None
    return transformers


def hf_form(module: L.LightningModule) -> tuple[type[Family], bool]:
    """The family a module exports as and whether with its LM head, or a one-line reason why
    it has no exact Hugging Face form."""
    from ptft.modules.language_model import LanguageModel
    from ptft.tasks.sequence_classifier import SequenceClassifier

    name = type(module).__name__
    if isinstance(module, SequenceClassifier):
        raise Unmappable(
            f"a {name} has no exact Hugging Face form: its head (a linear layer with a bias on "
            "the pooled features) is neither GPT-2/Llama's score layer (no bias) nor BERT's "
            "(behind a tanh pooler); export it with format=safetensors or format=onnx"
        )
    if not isinstance(module, LanguageModel):
        raise Unmappable(
            f"a {name} is not a language model, so transformers has no form for it; export it "
            "with format=safetensors or format=onnx"
        )
    family = export_family(dict(module.backbone_config))
    return family, family.lm_class != family.base_class


def write_hf(checkpoint: dict[str, Any], out_dir: Path, overwrite: bool = False) -> Path:
    """Write the Hugging Face directory of an exported checkpoint (atomically: a failure leaves
    no half-written ``out_dir``)."""
    transformers = transformers_module("ptft-export format=hf")
    from ptft.data.tokenizer import specials_of

    module = checkpoint["ptft_module"]
    family, with_head = hf_form(module)
    bb = dict(module.backbone_config)
    specials = specials_of(module.backbone)
    cfg = family.from_ptft(bb)
    cfg.update(
        architectures=[family.lm_class],
        bos_token_id=specials.bos,
        eos_token_id=specials.eos,
        pad_token_id=specials.pad,
    )
    state = family.export_weights(bb, module.backbone.state_dict(), with_head)
    config = transformers.AutoConfig.for_model(**cfg)
    model = getattr(transformers, family.lm_class)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not _is_tied_alias(model, k)]
    if missing or unexpected:
        raise ConfigError(
            f"the export to {family.lm_class} left weights unset ({', '.join(missing[:3])}) or "
            f"unused ({', '.join(unexpected[:3])}); this is a ptft bug, please report it"
        )
    model.tie_weights()
    model.eval()
    with atomic_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
        text = checkpoint.get("ptft_tokenizer")
        if isinstance(text, str):
            write_tokenizer(tmp, text, specials, bb["max_positions"])
        else:
            log.warning("no tokenizer to export with the model: %s has the weights only", out_dir)
    log.info("exported as %s to %s", family.lm_class, out_dir)
    return out_dir


def _is_tied_alias(model: Any, key: str) -> bool:
    """Whether ``key`` names a parameter that shares its tensor with another one of ``model``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    return any(p is params[key] for k, p in params.items() if k != key)


def write_tokenizer(directory: Path, text: str, specials: Any, max_length: int) -> None:
    """``tokenizer.json`` and the ``tokenizer_config.json`` that makes ``AutoTokenizer`` read it
    with the model's special-token roles."""
    from tokenizers import Tokenizer

    from ptft.data.tokenizer import write_tokenizer_config

    (directory / TOKENIZER_FILE).write_text(text)
    write_tokenizer_config(
        directory, specials, Tokenizer.from_str(text), model_max_length=max_length
    )
