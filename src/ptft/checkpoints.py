"""Reading a checkpoint file safely: what ptft reads from a ``.ckpt`` runs no code.

Checkpoints are exchanged between people (that is the point of a handoff), so a file is data:

* :func:`read_checkpoint` loads it with ``torch.load(weights_only=True)`` (tensors and plain
  containers only: a pickle that would run code is refused) and turns every way a file can be
  wrong (missing, empty, text, truncated, a pickle payload, not a dict) into one line;
* :func:`check_targets` resolves every ``_target_`` in a config read from the file before
  anything is built: a node ptft builds (the backbone, the optimizer, the scheduler, the data)
  must name code of the expected kind that ptft provides (:data:`MODULE`, :data:`BACKBONE`, …),
  or the class the user's own config names for that node; any other ``_target_`` is refused,
  so nothing read from a file is ever instantiated as a nested target.

See ``SECURITY.md``.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.optim import Optimizer

from ptft.config.targets import Kind, function_of, resolve_from_file, subclass_of
from ptft.errors import ConfigError
from ptft.modules.backbone_module import BackboneModule
from ptft.nn.backbone import Backbone

#: ``ptft_backbone.module``: the objective or task a checkpoint was trained as
MODULE = Kind(
    "one of ptft's objectives or tasks (a BackboneModule subclass defined in ptft)",
    ("ptft",),
    subclass_of(BackboneModule),
)
#: ``ptft_backbone.config._target_``, ``hyper_parameters.backbone._target_``
BACKBONE = Kind(
    "one of ptft's backbones (a ptft.nn.backbone.Backbone subclass defined in ptft)",
    ("ptft",),
    subclass_of(Backbone),
)
#: ``hyper_parameters.optimizer._target_``
OPTIMIZER = Kind(
    "a torch.optim.Optimizer subclass of torch.optim or ptft",
    ("torch.optim", "ptft"),
    subclass_of(Optimizer),
)
#: ``hyper_parameters.scheduler._target_``
SCHEDULER = Kind("a schedule of ptft.schedules", ("ptft.schedules",), function_of("ptft.schedules"))
#: ``ptft_run.data._target_``
DATA = Kind(
    "one of ptft's datamodules (a LightningDataModule subclass defined in ptft.data)",
    ("ptft.data",),
    subclass_of(L.LightningDataModule),
)
#: the nodes of a model config (the run record's ``model``) that ptft builds, and their kinds;
#: the constructor's arguments (``hyper_parameters``) are the same minus the model itself
MODEL_NODES: dict[str, Kind] = {
    "": MODULE,
    "backbone": BACKBONE,
    "optimizer": OPTIMIZER,
    "scheduler": SCHEDULER,
}
HPARAM_NODES = {k: v for k, v in MODEL_NODES.items() if k}


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (given as ``key=path``), loaded with ``weights_only=True`` (and
    memory-mapped: the tensors are read when used), or a one-line :class:`ConfigError` saying
    what is wrong with the file.

    A model directory reads as the checkpoint it stands for: a ``ptft-export
    format=safetensors`` export, or a Hugging Face model (:mod:`ptft.interop`), neither with
    pickle."""
    file = Path(path)
    where = f"{key}={path}"
    if file.is_dir():
        from ptft.interop.hf import is_hf_dir, read_hf_checkpoint
        from ptft.interop.safetensors_dir import is_safetensors_dir, read

        if is_safetensors_dir(file):
            return read(file, key)
        if is_hf_dir(file):
            return read_hf_checkpoint(file, key)
    if not file.is_file():
        raise ConfigError(f"{where}: no such checkpoint file")
    if file.stat().st_size == 0:
        raise ConfigError(f"{where} is not a loadable PyTorch checkpoint (an empty file)")
    # mmap needs torch.save's zip format (every Lightning checkpoint); an older file loads whole
    mmap = zipfile.is_zipfile(file)
    with file.open("rb") as f:
        head = f.read(4)
        if head == b"PK\x03\x04" and not mmap:  # a zip archive without its end
            raise ConfigError(
                f"{where} is not a loadable PyTorch checkpoint: the file is truncated or damaged"
            )
    try:
        with warnings.catch_warnings():  # torch's warnings about odd pickles: the error says it
            warnings.simplefilter("ignore")
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 -- every way a file can be bad becomes one line
        raise ConfigError(
            f"{where} is not a loadable PyTorch checkpoint: {_why(err, mmap, head)}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"{where} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__}, "
            "not a dict)"
        )
    return checkpoint


def _why(err: Exception, zipped: bool, head: bytes) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words (torch's own message is many lines
    and ends advising ``weights_only=False``: the one thing not to do with a file you received)."""
    text = str(err)
    name = re.search(r"GLOBAL ([\w.]+)", text)
    # a pickle (protocol 2+ starts with PROTO) or a torch.save archive that holds more than
    # tensors and plain containers
    pickled = zipped or head[:1] == b"\x80" or name is not None
    if "Weights only load failed" in text and pickled:
        return (
            "it holds Python objects, not only tensors and plain data"
            + (f" (it names {name.group(1)})" if name else "")
            + ", and ptft does not unpickle those (that can run code)"
        )
    if zipped:
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return f"the file is truncated or damaged ({first.split('. ')[0]})"
    return "a text file, or another kind of file"


def check_targets(
    tree: Any,
    what: str,
    nodes: Mapping[str, Kind],
    trusted: Any = None,
    where: str = "",
    path: str = "",
) -> None:
    """Check every ``_target_`` in ``tree`` (a config read from a file, at the field ``what``)
    before anything is built from it: the one of a node in ``nodes`` (dotted paths, ``""`` for
    the root) must resolve to that node's kind, or equal the ``_target_`` that ``trusted`` (the
    user's composed config for the same thing, or None) gives at the same path; any other
    ``_target_`` is refused, unless ``trusted`` names the same one there. ``where`` is the
    user's config node that ``trusted`` is (``model``), for the hint in the error."""
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            check_targets(item, what, nodes, _child(trusted, i), where, f"{path}[{i}]")
        return
    if not isinstance(tree, Mapping):
        return
    if "_target_" in tree:
        field = f"{what}.{path}._target_" if path else f"{what}._target_"
        node = f"{where}.{path}" if where and path else (where or None)
        own = _child(trusted, "_target_")
        allowed = [own] if isinstance(own, str) else []
        if path in nodes:
            resolve_from_file(tree["_target_"], nodes[path], field, allowed, node)
        elif tree["_target_"] not in allowed:
            raise ConfigError(
                f"{field}={tree['_target_']!r} is refused: a file may name a class only where "
                "ptft builds one (no nested _target_ is instantiated from a file)"
            )
    for key, value in tree.items():
        if key != "_target_":
            sub = f"{path}.{key}" if path else str(key)
            check_targets(value, what, nodes, _child(trusted, key), where, sub)


def _child(trusted: Any, key: Any) -> Any:
    if isinstance(trusted, Mapping):
        return trusted.get(key)
    if isinstance(trusted, list) and isinstance(key, int) and key < len(trusted):
        return trusted[key]
    return None
