"""ONNX export of any ptft model (``ptft-export format=onnx``), checked with onnxruntime.

Every objective and task is a LightningModule whose ``forward(x)`` gives logits, so one export
fits them all: the graph takes one input, the token ids ``input_ids (B, T)`` int64 of a token
model or the images ``pixel_values (B, C, H, W)`` float32 of an image model, and gives one
output, ``logits``. The batch axis is dynamic, and so is the sequence axis of a token model (up
to the backbone's ``max_positions``). There is no attention-mask input: a bidirectional
Transformer derives its padding mask from ``pad_token_id`` inside the model, and a causal one
needs none for right padding (no real token attends to a later position), exactly as in
training and ``ptft-eval``.

The export goes through ``torch.onnx.export(..., dynamo=True)`` (torch.export, then
onnxscript) on a float32 CPU copy in eval mode: the caller's module is never touched. The
extra ``onnx`` (onnx, onnxscript, onnxruntime) is imported inside the functions only, so
importing this module needs none of it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ptft.errors import ConfigError

#: the graph's input for a token model (Hugging Face's name, so ONNX tools know it)
TOKENS_INPUT = "input_ids"
#: the graph's input for an image model
IMAGES_INPUT = "pixel_values"
#: the graph's one output
OUTPUT = "logits"

_EXTRA = "ptft-export format=onnx needs the onnx extra: pip install 'ptft[onnx]'"
#: loggers the exporter writes warnings to (torchvision ops it skips, shape guards, rewrites)
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx",
    "torch._subclasses",
    "torch.utils._sympy",
    "onnxscript",
    "onnx_ir",
)


def _require(name: str) -> ModuleType:
    """Import a package of the ``onnx`` extra, or fail with one line that names the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"{_EXTRA} (cannot import {name})") from err


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's warnings and log records for the duration of one call only."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _input_shape(module: nn.Module) -> tuple[int, ...]:
    shape = getattr(module, "input_shape", None)
    if shape is None:
        raise ConfigError(
            f"{type(module).__name__} has no input_shape: ONNX export takes a ptft model "
            "(an objective or a task)"
        )
    return tuple(int(n) for n in shape)


def _is_token_model(module: nn.Module) -> bool:
    """Whether ``module`` reads token ids (its backbone embeds tokens) rather than images."""
    return hasattr(getattr(module, "backbone", None), "token_embedding")


def _max_positions(module: nn.Module) -> int:
    backbone = module.backbone
    return int(getattr(backbone, "max_positions", _input_shape(module)[0]))


def example_input(module: nn.Module) -> torch.Tensor:
    """A small valid input for ``module``, to trace the export with: token ids ``(2, T)`` int64
    for a token model (``T`` = the data's sequence length, no padding), images
    ``(2, *input_shape)`` float32 for an image model. Seeded, so an export is reproducible.

    Two rows and at least two positions: torch.export fixes an axis of size 1 to a constant.
    """
    shape = _input_shape(module)
    generator = torch.Generator().manual_seed(0)
    if not _is_token_model(module):
        return torch.randn(2, *shape, generator=generator)
    backbone = module.backbone
    length = max(2, min(shape[0], _max_positions(module))) if _max_positions(module) > 1 else 1
    vocab = int(getattr(backbone, "vocab_size", backbone.token_embedding.num_embeddings))
    pad = getattr(backbone, "pad_token_id", None)
    if pad is None or vocab < 2:
        return torch.randint(0, vocab, (2, length), generator=generator)
    # draw from the vocabulary less the pad id: a padded example would trace no differently,
    # but check_onnx on it would compare padding only
    ids = torch.randint(0, vocab - 1, (2, length), generator=generator)
    return ids + (ids >= pad).long()


def _model_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU in the graph's dtype, its shape checked (one line if wrong)."""
    x = x.detach().cpu()
    shape = _input_shape(module)
    if _is_token_model(module):
        if x.dim() != 2 or x.is_floating_point() or x.is_complex():
            raise ConfigError(
                f"{type(module).__name__} reads integer token ids of shape (B, T), "
                f"got {x.dtype} {list(x.shape)}"
            )
        if x.shape[1] > _max_positions(module):
            raise ConfigError(
                f"{x.shape[1]} tokens exceed the model's max_positions={_max_positions(module)}"
            )
        return x.long()
    if tuple(x.shape[1:]) != shape:
        raise ConfigError(
            f"{type(module).__name__} reads images of shape (B, {', '.join(map(str, shape))}), "
            f"got {list(x.shape)}"
        )
    return x.float()


def _cpu_copy(module: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode (dropout off, batch norm on its running statistics);
    the caller's module keeps its device, dtype and training flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone = copy.deepcopy(module)  # a LightningModule's copy leaves its trainer out
    clone = clone.to(device="cpu", dtype=torch.float32).eval()
    clone.requires_grad_(False)
    return clone


def _dynamic_shapes(module: nn.Module) -> tuple[dict[int, object]]:
    """Dynamic batch; for tokens a dynamic sequence too, bounded by ``max_positions``."""
    axes: dict[int, object] = {0: torch.export.Dim("batch")}
    if _is_token_model(module) and _max_positions(module) > 1:
        axes[1] = torch.export.Dim("sequence", max=_max_positions(module))
    return (axes,)


def _traceable(example: torch.Tensor, widen: bool) -> torch.Tensor:
    """The example with at least two rows (and, if ``widen``, two positions): torch.export
    fixes an axis of size 1 to a constant, which would lose the dynamic axis."""
    if example.shape[0] == 0:
        raise ConfigError("the example input for the ONNX export has no rows")
    if example.shape[0] == 1:
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    if widen and example.shape[1] == 1:
        example = example.repeat(1, 2)
    return example


def export_onnx(module: nn.Module, path: str | Path, example: torch.Tensor | None = None) -> Path:
    """Write ``module`` as an ONNX graph ``input_ids``/``pixel_values`` → ``logits`` to ``path``.

    The batch axis is dynamic, and for a token model the sequence axis too (1 … the backbone's
    ``max_positions``); token models need no attention-mask input, since the model derives
    its padding mask from the pad id itself. ``example`` (default :func:`example_input`) only
    traces the graph. The file appears whole or not at all (written beside ``path``, then
    renamed); the weights stay inside it up to torch's 1.5 GB threshold (ONNX's protobuf
    limit is 2 GB), beyond which they go to ``<name>.data`` beside it, written before the
    graph. Returns the path written.
    """
    _require("onnx")
    _require("onnxscript")
    path = Path(path)
    token_model = _is_token_model(module)
    example = _model_input(module, example_input(module) if example is None else example)
    example = _traceable(example, token_model and _max_positions(module) > 1)
    clone = _cpu_copy(module)
    with _quiet():
        program = torch.onnx.export(
            clone,
            (example,),
            dynamo=True,
            input_names=[TOKENS_INPUT if token_model else IMAGES_INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=_dynamic_shapes(module),
            verbose=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _quiet():
            program.save(staging / path.name)  # external data only past 1.5 GB
        # the external data (if any) first, the graph last: the graph names its data file
        # by a path relative to itself, the same in the staging folder and beside `path`
        for file in sorted(staging.iterdir(), key=lambda f: f.name == path.name):
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def check_onnx(
    module: nn.Module, path: str | Path, inputs: Sequence[torch.Tensor], atol: float = 1e-4
) -> float:
    """Run the ONNX graph at ``path`` in onnxruntime on each input and compare its logits with
    ``module``'s (a float32 CPU copy in eval mode, as exported): proof that the file computes
    what the model does. Returns the largest absolute difference; raises a one-line
    ConfigError when it is above ``atol`` (a NaN where torch has none counts as infinite)."""
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    if not inputs:
        raise ConfigError("check_onnx needs at least one input to compare on")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    reference = _cpu_copy(module)
    worst = 0.0
    for x in inputs:
        x = _model_input(module, x)
        with torch.no_grad():
            expected = reference(x).float()
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0]).float()
        if got.shape != expected.shape:
            raise ConfigError(
                f"{path} gives logits of shape {list(got.shape)} for input {list(x.shape)}; "
                f"{type(module).__name__} gives {list(expected.shape)}"
            )
        difference = (got - expected).abs()
        difference[(got == expected) | (got.isnan() & expected.isnan())] = 0.0  # inf, NaN
        difference[difference.isnan()] = math.inf
        if difference.numel():
            worst = max(worst, float(difference.max()))
    if worst > atol:
        raise ConfigError(
            f"{path} does not reproduce {type(module).__name__}: max abs difference of the "
            f"logits {worst:.3g} > atol={atol:g} over {len(inputs)} input(s)"
        )
    return worst
