"""``ptft-generate``'s work: a checkpoint → its module and tokenizer → continuations of the
prompts, printed and written to ``generations.jsonl``. Decoding itself is
:mod:`ptft.nn.decoding`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from ptft.cli import NO_PROMPT
from ptft.data.tokenizer import check_special_ids, plain_text, specials_of
from ptft.errors import ConfigError
from ptft.modules.language_model import LanguageModel
from ptft.nn.decoding import check_sampling, generate, stop_reason
from ptft.runs.load import load_run

log = logging.getLogger(__name__)


def can_generate(module: Any) -> bool:
    """Whether ``module`` is a causal LM that says how to turn text into a prompt.

    Duck-typed, so any task with a causal backbone, an ``lm_head``, ``prompt_ids`` and
    ``stop_ids`` (the causal LM, a sequence generator) works without being listed here.
    """
    backbone = getattr(module, "backbone", None)
    return (
        bool(getattr(backbone, "causal", False))
        and hasattr(module, "lm_head")
        and callable(getattr(module, "prompt_ids", None))
        and hasattr(module, "stop_ids")
    )


def load_generator(
    ckpt_path: str | Path, model: Mapping[str, Any] | None = None
) -> tuple[LanguageModel, Tokenizer]:
    """The module and the tokenizer saved in a ptft checkpoint (or a model directory), or a
    one-line ``ConfigError``;
    ``model`` is the user's own model config, naming classes of theirs the file may name
    (:func:`ptft.runs.load.load_run`)."""
    module, record = load_run(ckpt_path, model)
    if not can_generate(module):
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        raise ConfigError(
            f"ckpt_path={ckpt_path} holds a {name}, which cannot generate text; "
            "generation needs a causal_lm or sequence_generator checkpoint"
        )
    text = record["tokenizer"]
    if text is None:
        raise ConfigError(f"ckpt_path={ckpt_path} carries no tokenizer; it was not trained on text")
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001 -- the tokenizers library raises its own types
        raise ConfigError(
            f"ckpt_path={ckpt_path}: its tokenizer (ptft_tokenizer) does not load ({err})"
        ) from None
    if not specials_of(module.backbone).native:  # an imported tokenizer: read as transformers does
        return module, tokenizer
    check_special_ids(tokenizer, source=f"the tokenizer in {ckpt_path}")
    return module, plain_text(tokenizer)


def pick_device(name: str) -> torch.device:
    """``"auto"`` is cuda when there is one, else cpu; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"device={name} is not a torch device; use cpu, cuda, cuda:N or auto"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return device


def generate_text(cfg: DictConfig) -> list[dict[str, Any]]:
    """``ptft-generate``: decode ``num_samples`` continuations of each prompt, print them and
    write one JSON line per sample to ``<output_dir>/generations.jsonl``."""
    texts = [cfg.prompt] if cfg.get("prompt") is not None else []
    texts += list(cfg.get("prompts") or [])
    if not texts:
        raise ConfigError(NO_PROMPT)
    if cfg.num_samples < 1:
        raise ConfigError(f"num_samples={cfg.num_samples}; it must be >= 1")
    try:
        check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = pick_device(cfg.device)
    own = cfg.get("model")
    module, tokenizer = load_generator(
        cfg.ckpt_path, OmegaConf.to_container(own, resolve=True) if own else None
    )
    module.to(device)

    # the module knows its prompt format (the causal LM starts a document after <eos>)
    prompt_ids = [module.prompt_ids(tokenizer, text) for text in texts]
    stop_ids = tuple(module.stop_ids)
    jobs = [(p, s) for p in range(len(texts)) for s in range(cfg.num_samples)]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    outputs = generate(
        module,
        [prompt_ids[p] for p, _ in jobs],
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_ids=stop_ids,
        generator=generator,
    )

    records = []
    for (p, s), ids in zip(jobs, outputs, strict=True):
        records.append(
            {
                "prompt": texts[p],
                "sample": s,
                "completion": tokenizer.decode(ids, skip_special_tokens=True),
                "token_ids": ids,
                "num_tokens": len(ids),
                "stop_reason": stop_reason(ids, cfg.max_new_tokens, stop_ids),
            }
        )
    out = Path(cfg.paths.output_dir) / "generations.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for (p, s), r in zip(jobs, records, strict=True):
        print(f"--- prompt {p}, sample {s} ({r['num_tokens']} tokens, {r['stop_reason']})")
        print(r["prompt"] + r["completion"])
    log.info("%d generations written to %s", len(records), out)
    return records
