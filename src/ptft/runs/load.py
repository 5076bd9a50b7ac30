"""Rebuild the module a ptft checkpoint was trained as, for ``ptft-eval`` and ``ptft-generate``;
check a checkpoint to resume from (``ptft-train ckpt_path=``) before Lightning reads it.

Every name the file holds is resolved by :mod:`ptft.checkpoints`' rules before anything is
called: a checkpoint someone sent runs no code (``SECURITY.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from ptft.checkpoints import (
    BACKBONE,
    DATA,
    HPARAM_NODES,
    MODEL_NODES,
    MODULE,
    check_targets,
    read_checkpoint,
)
from ptft.config.targets import resolve_from_file
from ptft.errors import ConfigError


def load_run(
    path: str | Path,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> tuple[L.LightningModule, dict]:
    """The module saved in ``path`` (weights loaded) and the run record written with it,
    plus the checkpoint's tokenizer JSON under ``"tokenizer"`` and its class names under
    ``"labels"`` (None without them).

    ``model`` and ``data`` are the user's own composed configs (``ptft-eval model._target_=…``),
    if any: a class of the user's that the checkpoint names is allowed where they name the same
    one; anything else the file names must be ptft's own code of the expected kind."""
    from ptft.handoff import resolve_checkpoint

    where = f"ckpt_path={path}"
    checkpoint = read_checkpoint(resolve_checkpoint(path, "ckpt_path"), "ckpt_path")
    record, backbone = checkpoint.get("ptft_run"), checkpoint.get("ptft_backbone")
    hparams = checkpoint.get("hyper_parameters")
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("data"), dict)
        or not isinstance(backbone, dict)
        or not isinstance(hparams, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
    ):
        raise ConfigError(
            f"{where} was not written by ptft-train (no run record); it cannot be rebuilt"
        )
    # every name in the file is resolved before anything is called
    try:
        own = (model or {}).get("_target_")
        cls = resolve_from_file(
            backbone.get("module"),
            MODULE,
            "ptft_backbone.module",
            [own] if isinstance(own, str) else [],
            "model",
        )
        check_targets(hparams, "hyper_parameters", HPARAM_NODES, model, "model")
        own_backbone = (model or {}).get("backbone")
        check_targets(
            backbone.get("config"),
            "ptft_backbone.config",
            {"": BACKBONE},
            own_backbone,
            "model.backbone",
        )
        check_targets(record.get("model"), "ptft_run.model", MODEL_NODES, model, "model")
        check_targets(record.get("data"), "ptft_run.data", {"": DATA}, data, "data")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not all(isinstance(k, str) for k in hparams):
        raise ConfigError(f"{where}: its hyper_parameters have keys that are not names")
    try:
        module = cls(**hparams)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(
            f"{where}: its hyper_parameters do not build a {cls.__name__} ({_first_line(err)})"
        ) from None
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(
            f"{where}: its weights do not fit a {cls.__name__} ({_first_line(err)})"
        ) from None
    tokenizer, labels = checkpoint.get("ptft_tokenizer"), checkpoint.get("ptft_labels")
    return module, {
        **record,
        "tokenizer": tokenizer if isinstance(tokenizer, str) else None,
        "labels": labels if _names(labels) else None,
    }


def check_resume(path: str | Path, model: L.LightningModule) -> None:
    """Stop with one line unless ``path`` is a checkpoint that ``model`` can resume from: a file
    ``torch.load(weights_only=True)`` reads, written by a run of the same class, with the same
    weights (names and shapes). Lightning then reads it (``weights_only=True`` too)."""
    where = f"ckpt_path={path}"
    checkpoint = read_checkpoint(path, "ckpt_path")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(
            f"{where} is not a Lightning checkpoint (it has no state_dict); "
            "pass a .ckpt written by ptft-train"
        )
    if "loops" not in checkpoint or "optimizer_states" not in checkpoint:
        raise ConfigError(
            f"{where} holds weights only (no optimizer and loop state), so it cannot resume a "
            "run; use model.pretrained= to start from its backbone"
        )
    mine = f"{type(model).__module__}.{type(model).__qualname__}"
    theirs = (checkpoint.get("ptft_backbone") or {}).get("module")
    if isinstance(theirs, str) and theirs != mine:  # compared as text: nothing is imported
        raise ConfigError(
            f"{where}: ptft_backbone.module={theirs} is not this run's model {mine}; resume with "
            "the config it was trained with, or start from its backbone with model.pretrained="
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {list(state[k].shape)} in the checkpoint vs {list(own[k].shape)} here"
        for k in sorted(set(own) & set(state))
        if not hasattr(state[k], "shape") or state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if shapes:
            problems.append(f"shape mismatch: {shapes[0]}")
        if missing:
            problems.append(f"absent from the checkpoint: {', '.join(missing[:3])}")
        if unexpected:
            problems.append(f"not in this model: {', '.join(unexpected[:3])}")
        raise ConfigError(
            f"{where} does not fit this run's model ({'; '.join(problems)}); resume with the "
            "config it was trained with"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
