"""The pretrain → fine-tune handoff: load only a backbone's weights, and its architecture.

``model.pretrained=PATH`` (a ``.ckpt`` file, a run directory, a ``ptft-export
format=safetensors`` directory or a Hugging Face model directory) replaces the config's
``model.backbone`` with the backbone config stored in the checkpoint, builds the new
module, and loads the ``backbone.*`` tensors strictly. Anything that does not fit is a
clear error, never a silent partial load. This is not a resume (``ckpt_path=``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptft.checkpoints import BACKBONE, check_targets, read_checkpoint
from ptft.config.targets import locate
from ptft.config.validate import signature
from ptft.data.tokenizer import TOKENIZER_FILE
from ptft.errors import ConfigError
from ptft.files import write_atomic

log = logging.getLogger(__name__)

PREFIX = "backbone."


@dataclass
class Pretrained:
    """A backbone read from a checkpoint: its file, its config and its weights."""

    path: Path
    config: dict[str, Any]
    input_shape: list[int]
    weights: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)
    #: the ``tokenizer.json`` text the backbone was trained with (text backbones only)
    tokenizer: str | None = None


def resolve_checkpoint(path: str | Path, key: str = "model.pretrained") -> Path:
    """A ``.ckpt`` file or a model directory (an export, a Hugging Face model) as given, or
    ``checkpoints/last.ckpt`` inside a run directory."""
    from ptft.interop.hf import is_hf_dir
    from ptft.interop.safetensors_dir import is_safetensors_dir

    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(
            f"{key}={path}: no such file or directory; pass a .ckpt file, a run directory or "
            "a model directory (ptft-export, Hugging Face)"
        )
    if p.is_file() or is_safetensors_dir(p) or is_hf_dir(p):
        return p
    for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
        if candidate.is_file():
            return candidate
    found = sorted(p.glob("checkpoints/*.ckpt")) or sorted(p.glob("*.ckpt"))
    if len(found) == 1:
        return found[0]
    what = "several checkpoints: " + ", ".join(f.name for f in found) if found else "no checkpoint"
    raise ConfigError(f"{key}={path} is a directory with {what}; pass the .ckpt file itself")


#: what ``ptft-eval``, ``ptft-generate`` and :func:`ptft.interop.hf.load` accept: the same
resolve_model_source = resolve_checkpoint


def read_pretrained(path: str | Path, backbone: Mapping[str, Any] | None = None) -> Pretrained:
    """Read the backbone record and weights from a ptft checkpoint (``weights_only``).

    The backbone the file names (``ptft_backbone.config._target_``) must be one of ptft's, or
    the class ``backbone`` (the user's own ``model.backbone`` config) names: a checkpoint
    someone sent cannot have ptft call anything else. Checked here, before anything is built."""
    file = resolve_checkpoint(path)
    checkpoint = read_checkpoint(file, "model.pretrained")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(
            f"model.pretrained={file} is not a Lightning checkpoint (it has no state_dict)"
        )
    state = checkpoint["state_dict"]
    weights = {
        k[len(PREFIX) :]: v
        for k, v in state.items()
        if isinstance(k, str) and k.startswith(PREFIX) and isinstance(v, torch.Tensor)
    }
    record = checkpoint.get("ptft_backbone")
    if not weights or not isinstance(record, dict):
        raise ConfigError(
            f"model.pretrained={file} has no backbone "
            "(no 'backbone.*' weights and backbone record); pass a checkpoint written by a ptft run"
        )
    config, input_shape = record.get("config"), record.get("input_shape")
    if not isinstance(config, dict) or not _shape(input_shape):
        raise ConfigError(
            f"model.pretrained={file}: its backbone record (ptft_backbone) has no config "
            "and input_shape; pass a checkpoint written by a ptft run"
        )
    try:
        check_targets(config, "ptft_backbone.config", {"": BACKBONE}, backbone, "model.backbone")
    except ConfigError as err:
        raise ConfigError(f"model.pretrained={file}: {err}") from None
    # a tensor tied to a backbone weight (an LM head sharing the token embedding) comes along
    shared = {v.data_ptr() for v in weights.values()}
    skipped = sorted(
        k
        for k, v in state.items()
        if not (isinstance(k, str) and k.startswith(PREFIX))
        and not (isinstance(v, torch.Tensor) and v.data_ptr() in shared)
    )
    tokenizer = checkpoint.get("ptft_tokenizer")
    return Pretrained(
        file,
        dict(config),
        list(input_shape),
        weights,
        skipped,
        tokenizer if isinstance(tokenizer, str) else None,
    )


#: backbone tensors that only a language model's head reads (an untied output matrix, BERT's
#: transform and output bias)
LM_HEAD_PARTS = ("lm_output.", "lm_transform.", "lm_bias.")


def without_lm_head(pretrained: Pretrained) -> Pretrained:
    """The backbone for a task that does not score tokens (a classifier): its LM-head parts are
    left in the checkpoint (listed as skipped), so no parameter sits unused in the task."""
    if pretrained.config.get("lm_head", "tied") == "tied":
        return pretrained
    dropped = sorted(k for k in pretrained.weights if k.startswith(LM_HEAD_PARTS))
    return Pretrained(
        pretrained.path,
        {**pretrained.config, "lm_head": "tied"},
        pretrained.input_shape,
        {k: v for k, v in pretrained.weights.items() if k not in dropped},
        pretrained.skipped + [PREFIX + k for k in dropped],
        pretrained.tokenizer,
    )


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in value
    )


def with_tokenizer(
    data_cfg: dict[str, Any],
    tokenizer_json: str,
    directory: Path,
    source: str,
    special_tokens: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The data config, set to encode text with ``tokenizer_json`` (saved as
    ``directory/tokenizer.json``; an imported tokenizer's ``special_tokens`` roles, from the
    backbone config, go beside it as ``tokenizer_config.json``).

    Data whose datamodule takes no ``tokenizer`` (images) is returned unchanged. A
    ``data.tokenizer`` the user set that differs from the checkpoint's is refused: token ids
    would mean other words.
    """
    if "tokenizer" not in signature(locate(data_cfg["_target_"])).params:
        return data_cfg
    given = data_cfg.get("tokenizer")
    if given:
        path = Path(given).expanduser()
        if path.is_file() and json.loads(path.read_text()) != json.loads(tokenizer_json):
            raise ConfigError(
                f"data.tokenizer={given} is not the tokenizer {source} was trained with; "
                "drop data.tokenizer to use the checkpoint's"
            )
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / TOKENIZER_FILE
    if special_tokens:
        from tokenizers import Tokenizer

        from ptft.data.tokenizer import SpecialTokens, write_tokenizer_config

        specials = SpecialTokens.from_dict(dict(special_tokens))
        if not specials.native:  # the roles first: a reader of tokenizer.json finds them
            write_tokenizer_config(directory, specials, Tokenizer.from_str(tokenizer_json))
    write_atomic(target, tokenizer_json)  # another rank may be writing the same file
    log.info("text is encoded with the tokenizer of %s (saved to %s)", source, target)
    return {**data_cfg, "tokenizer": str(target)}


def load_backbone(module: torch.nn.Module, pretrained: Pretrained) -> dict[str, int]:
    """Copy the pretrained weights into ``module.backbone`` (strict) and log a report."""
    own = module.backbone.state_dict()
    missing = sorted(set(own) - set(pretrained.weights))
    unexpected = sorted(set(pretrained.weights) - set(own))
    mismatched = [
        f"{k} {list(pretrained.weights[k].shape)} in the checkpoint vs {list(own[k].shape)} here"
        for k in sorted(set(own) & set(pretrained.weights))
        if pretrained.weights[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
            problems.append(f"shape mismatch: {mismatched[0]}{more}")
        if unexpected:
            problems.append(f"missing here: {', '.join(unexpected[:3])}")
        if missing:
            problems.append(f"absent from the checkpoint: {', '.join(missing[:3])}")
        detail = "; ".join(problems)
        shapes = (
            f"; it was pretrained on inputs of shape {pretrained.input_shape}, "
            f"this data has {list(module.input_shape)}"
            if list(pretrained.input_shape) != list(module.input_shape)
            else ""
        )
        raise ConfigError(
            f"the backbone in {pretrained.path} does not fit this model ({detail}){shapes}"
        )
    module.backbone.load_state_dict(pretrained.weights, strict=True)
    # tensors outside the backbone that are not tied to one of its weights start untrained
    shared = {v.data_ptr() for v in module.backbone.state_dict().values()}
    own_new = [
        k
        for k, v in module.state_dict().items()
        if not k.startswith(PREFIX) and v.data_ptr() not in shared
    ]
    new = sorted({k.split(".")[0] for k in own_new})
    report = {
        "loaded": len(pretrained.weights),
        "new": len(own_new),
        "skipped": len(pretrained.skipped),
    }
    log.info(
        "handoff from %s: loaded %d backbone tensors; new: %d tensors (%s); "
        "skipped from the checkpoint: %d tensors (%s)",
        pretrained.path,
        report["loaded"],
        report["new"],
        ", ".join(new) or "none",
        report["skipped"],
        ", ".join(sorted({k.split(".")[0] for k in pretrained.skipped})) or "none",
    )
    return report
