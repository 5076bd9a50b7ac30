"""ptft's portable model directory (``ptft-export format=safetensors``): no pickle anywhere.

* ``model.safetensors``: the module's weights (a tensor tied to another is stored once and
  named in ``ptft_config.json`` under ``tied``);
* ``ptft_config.json``: what a checkpoint carries besides weights and training state (the
  hyperparameters, the backbone record, the run record, class names), as JSON;
* ``tokenizer.json`` (+ ``tokenizer_config.json``) for text models.

:func:`read` gives back the checkpoint dict, so everything that reads a ``.ckpt``
(``model.pretrained=``, ``ptft-eval``, ``ptft-generate``, :func:`ptft.interop.hf.load`) reads
the directory the same way, names checked the same way (``SECURITY.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ptft.errors import ConfigError

CONFIG_FILE = "ptft_config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
#: the checkpoint entries that go into ptft_config.json (plain containers only)
RECORD_KEYS = ("hyper_parameters", "ptft_backbone", "ptft_run", "ptft_labels", "ptft_data_manifest")
FORMAT = 1


def is_safetensors_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def safetensors_torch(what: str) -> Any:
    """``safetensors.torch``, or a one-line error naming the extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError(f"{what} needs the safetensors package: pip install 'ptft[hf]'") from None
    return safetensors.torch


def untied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors with each shared storage kept once (safetensors refuses aliases), and the
    names of the dropped aliases → the name kept."""
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = tensor.detach().contiguous().cpu()
    return kept, tied


def write(checkpoint: dict[str, Any], directory: Path) -> None:
    """Write a checkpoint's weights and records into ``directory`` (which must exist)."""
    st = safetensors_torch("ptft-export format=safetensors")
    state, tied = untied(checkpoint["state_dict"])
    record = {k: checkpoint[k] for k in RECORD_KEYS if k in checkpoint}
    record.update(format=FORMAT, tied=tied)
    try:
        text = json.dumps(record, indent=2)
    except TypeError as err:
        raise ConfigError(f"the checkpoint's records are not plain data ({err})") from None
    st.save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(text + "\n")
    if isinstance(checkpoint.get("ptft_tokenizer"), str):
        (directory / TOKENIZER_FILE).write_text(checkpoint["ptft_tokenizer"])


def read(directory: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint dict a portable directory holds (weights as tensors, records as plain
    data), or a one-line error."""
    directory = Path(directory)
    try:
        record = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{key}={directory}: {CONFIG_FILE} does not read as JSON ({err})"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(
            f"{key}={directory}: {CONFIG_FILE} is not a ptft export of format {FORMAT}; "
            "export it again with ptft-export format=safetensors"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ConfigError(f"{key}={directory} has no {WEIGHTS_FILE}; the export is incomplete")
    st = safetensors_torch(f"{key}={directory}")
    try:
        state = st.load_file(str(weights))
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own error types
        raise ConfigError(f"{key}={weights} does not read as safetensors ({err})") from None
    tied = record.pop("tied", {}) or {}
    if not isinstance(tied, dict) or not all(
        isinstance(a, str) and isinstance(b, str) and b in state for a, b in tied.items()
    ):
        raise ConfigError(f"{key}={directory}: {CONFIG_FILE} names tied weights it does not hold")
    for alias, name in tied.items():
        state[alias] = state[name]
    checkpoint = {k: record[k] for k in RECORD_KEYS if k in record}
    checkpoint["state_dict"] = state
    tokenizer = directory / TOKENIZER_FILE
    if tokenizer.is_file():
        checkpoint["ptft_tokenizer"] = tokenizer.read_text()
    return checkpoint
