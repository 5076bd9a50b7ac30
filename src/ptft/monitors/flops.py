"""FLOP accounting for throughput and MFU: the peak FLOP/s of a device in a dtype, and the
training FLOPs of one batch.

MFU (model FLOPs utilisation, PaLM appendix B) = the model's training FLOPs per second ÷ the
device's peak. The peak is a datasheet figure (dense matrix multiply, no sparsity) from ptft's
table, then Lightning's, or, for a device neither knows (every CPU), a square matmul timed once
per process. A batch's FLOPs come from the model when it can count them analytically
(``training_flops``: the Transformer LMs), else from Lightning's ``measure_flops`` run on a
meta-device copy of the model (no memory, no arithmetic, no change to the live model).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import time
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: dtype names of the peak tables; ``tf32`` is fp32 matmuls on tensor cores (Ampere and later)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

#: Dense (no sparsity) peak FLOP/s per GPU from NVIDIA's datasheets, for the GPUs Lightning's
#: ``get_available_flops`` misses or gets wrong; Lightning's table covers the rest (A100, H100
#: SXM and PCIe, ...). The datasheets give tensor-core figures "with sparsity": dense is half.
#: Each entry: a regex over the lower-cased ``torch.cuda.get_device_name()``, tried in order.
DATASHEET: list[tuple[str, str, dict[str, float]]] = [
    # H200 NVL datasheet: FP32 60 TF; TF32 835, BF16/FP16 1,671 TF with sparsity. Lightning
    # lists the sparse figures, and only for names ending in "nvl1"
    (
        "NVIDIA H200 NVL",
        r"\bh200\b.*\bnvl\b",
        {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12},
    ),
    # H200 SXM ("NVIDIA H200"): FP32 67 TF; TF32 989, BF16/FP16 1,979 TF with sparsity (the
    # H100 SXM's tensor cores and clocks). Lightning: sparse figures, names with "sxm1" only
    (
        "NVIDIA H200",
        r"\bh200\b",
        {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    ),
    # GH200 (Grace Hopper): FP32 67 TF; TF32 494, BF16/FP16 990 TF dense. Its name holds "h200"
    (
        "NVIDIA GH200",
        r"\bgh200\b",
        {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    ),
    # H100 NVL (one 94 GB card): FP32 60 TF; TF32 835, BF16/FP16 1,671 TF with sparsity.
    # Lightning's "h100 nvl" holds the dense figures of the two-card NVL pair, twice these
    (
        "NVIDIA H100 NVL",
        r"\bh100\b.*\bnvl\b",
        {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12},
    ),
    # L40S: FP32 91.6 TF; TF32 183, BF16/FP16 362.05 TF dense. Lightning reads "l40s" as the L4
    (
        "NVIDIA L40S",
        r"\bl40s\b",
        {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12, "fp16": 362.05e12},
    ),
    # L40: FP32 90.5 TF; TF32 90.5, BF16/FP16 181.05 TF dense. Lightning reads "l40" as the L4
    (
        "NVIDIA L40",
        r"\bl40\b",
        {"fp32": 90.5e12, "tf32": 90.5e12, "bf16": 181.05e12, "fp16": 181.05e12},
    ),
]

#: the n of the n×n matmul that measures a peak, and how many are timed (the best one counts);
#: on 2 CPU cores a 1024³ matmul runs as fast as a 2048³ one (within the noise) in an eighth of
#: the time
PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
PEAK_REPEATS = {"cpu": 5, "cuda": 10}


class Peak(NamedTuple):
    """A device's peak FLOP/s in one dtype, and where the figure came from."""

    flops: float
    source: str


def compute_dtype(precision: str | int) -> torch.dtype:
    """The dtype a Trainer's ``precision`` multiplies matrices in: ``bf16-mixed`` → bf16,
    ``16-mixed`` → fp16, ``64-true`` → fp64, anything else (``32-true``) → fp32."""
    precision = str(precision)
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32


def uses_tf32(device: torch.device) -> bool:
    """Whether fp32 matmuls on ``device`` run on TF32 tensor cores: an Ampere or later GPU with
    ``torch.set_float32_matmul_precision`` below ``"highest"`` (PyTorch's default is "highest")."""
    return (
        device.type == "cuda"
        and torch.get_float32_matmul_precision() != "highest"
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


def table_peak(device_name: str, dtype: str) -> float | None:
    """ptft's datasheet figure for a ``torch.cuda.get_device_name()`` and a dtype name
    (``fp32``, ``tf32``, ``bf16``, ``fp16``), or None when the table has no such device."""
    name = device_name.lower()
    for _, pattern, peaks in DATASHEET:
        if re.search(pattern, name):
            return peaks.get(dtype)
    return None


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> Peak | None:
    """The datasheet peak of a GPU: ptft's table first, then Lightning's; None when neither has
    it."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "tf32" if dtype == torch.float32 and uses_tf32(device) else DTYPE_NAMES.get(dtype)
    if key is None:
        return None
    ours = table_peak(name, key)
    if ours is not None:
        return Peak(ours, f"{name} {key} datasheet")
    if any(re.search(pattern, name.lower()) for _, pattern, _ in DATASHEET):
        return (
            None  # a device of ptft's table without this dtype: Lightning's entry is the wrong one
        )
    with (
        warnings.catch_warnings()
    ):  # Lightning warns about unknown devices; the caller says what it does
        warnings.simplefilter("ignore")
        theirs = get_available_flops(device, "tfloat32" if key == "tf32" else dtype)
    return Peak(float(theirs), f"{name} {key} datasheet (Lightning's table)") if theirs else None


def _synchronize(device: torch.device) -> None:
    """Wait for an accelerator's queued work, so the clock reads the time it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_flops(a: Tensor, b: Tensor) -> float:
    """FLOP/s of one ``a @ b`` of square n×n matrices: 2·n³ / seconds (waits for a GPU to
    finish)."""
    _synchronize(a.device)
    start = time.perf_counter()
    a @ b
    _synchronize(a.device)
    return 2 * a.shape[0] ** 3 / (time.perf_counter() - start)


@functools.cache
def _measured_peak(
    device: torch.device, dtype: torch.dtype, size: int, repeats: int, threads: int
) -> float:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    matmul_flops(a, b)  # warmup: first-call allocations and kernel selection
    # other jobs only ever slow a matmul down: the fastest one is the machine's peak
    return max(matmul_flops(a, b) for _ in range(repeats))


def measured_peak(
    device: torch.device | str,
    dtype: torch.dtype,
    size: int | None = None,
    repeats: int | None = None,
) -> float:
    """The FLOP/s of the fastest of ``repeats`` square ``size``² matmuls in ``dtype`` on ``device``,
    measured once per process (and per thread count: it sets a CPU's peak) and then cached."""
    device = torch.device(device)
    size = size or PEAK_SIZE.get(device.type, PEAK_SIZE["cuda"])
    repeats = repeats or PEAK_REPEATS.get(device.type, PEAK_REPEATS["cuda"])
    return _measured_peak(device, dtype, size, repeats, torch.get_num_threads())


def peak_flops(device: torch.device | str, dtype: torch.dtype) -> Peak:
    """The peak FLOP/s MFU divides by: a datasheet figure (ptft's table, then Lightning's), else
    a matmul measured on the device (every CPU, and GPUs neither table knows)."""
    device = torch.device(device)
    found = datasheet_peak(device, dtype)
    if found is not None:
        return found
    size = PEAK_SIZE.get(device.type, PEAK_SIZE["cuda"])
    name = DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    if device.type == "cuda":
        log.info(
            "no datasheet peak for %s in %s: measuring a matmul",
            torch.cuda.get_device_name(device),
            name,
        )
    return Peak(measured_peak(device, dtype), f"{device.type} {name} {size}³ matmul, measured")


# ------------------------------------------------------------------------ FLOPs of a batch
def token_count(batch: Any) -> int | None:
    """Tokens in a batch whose inputs are token ids ``(B, T)`` (the first tensor, integer and
    2-D), padding included; None for other batches (images)."""
    x = (
        batch
        if isinstance(batch, Tensor)
        else next(iter(batch.values() if isinstance(batch, Mapping) else batch))
    )
    if (
        isinstance(x, Tensor)
        and x.ndim == 2
        and not x.is_floating_point()
        and x.dtype != torch.bool
    ):
        return x.numel()
    return None


def _on_meta(value: Any) -> Any:
    if isinstance(value, Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, Mapping):
        return type(value)({k: _on_meta(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_on_meta(v) for v in value)
    return value


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are meta tensors (shapes only): nothing
    is allocated or computed, tied weights stay tied, and the live module is left untouched."""
    # deepcopy's memo maps each original tensor to its stand-in, so it is never copied
    memo: dict[int, Any] = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for p in module.parameters()
    }
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    clone = copy.deepcopy(module, memo)  # a LightningModule leaves its Trainer out of copies
    if hasattr(clone, "_device"):
        clone._device = torch.device("meta")  # LightningModule.device: tensors made in a step
    return clone


def _count_step(module: nn.Module, batch: Any) -> float:
    def loss(output: Any) -> Tensor:
        return output["loss"] if isinstance(output, Mapping) else output

    with warnings.catch_warnings():  # self.log without a Trainer warns, and logs nothing
        warnings.simplefilter("ignore")
        return float(measure_flops(module, lambda: module.training_step(batch, 0), loss))


def measured_training_flops(module: nn.Module, batch: Any) -> float:
    """FLOPs of one training step (``training_step``, then backward of its loss) on ``batch``,
    counted by Lightning's ``measure_flops`` (matrix multiplies, convolutions and attention, as
    PyTorch's FlopCounterMode counts them) on a meta-device copy of the module; where the step
    cannot run on the meta device (``torch.autocast("meta")`` fails, say), on a real copy. Either
    way the random number generators are restored afterwards: a step draws random numbers (its
    augmentations do, on the CPU generator even for meta inputs), and the live run must draw
    the same ones with and without this count."""
    devices = sorted({t.device.index or 0 for t in module.parameters() if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            return _count_step(meta_copy(module), _on_meta(batch))
        except Exception as error:  # any op the meta device lacks, or code that reads a value
            log.debug(
                "FLOPs of %s on the meta device failed (%s): counting on a copy",
                type(module).__name__,
                error,
            )
    with torch.random.fork_rng(devices=devices):
        clone = copy.deepcopy(module)
        clone.zero_grad(set_to_none=True)
        return _count_step(clone, batch)


def _signature(value: Any) -> Any:
    """Shapes and dtypes of a batch's tensors: what its measured FLOPs depend on."""
    if isinstance(value, Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, Mapping):
        return tuple((k, _signature(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return type(value).__name__


def training_flops(module: nn.Module, batch: Any) -> float:
    """FLOPs of one training step on ``batch``: the module's analytic count when it has one
    (``module.training_flops(batch)``), else measured (:func:`measured_training_flops`)."""
    hook = getattr(module, "training_flops", None)
    analytic = hook(batch) if callable(hook) else None
    return float(analytic) if analytic is not None else measured_training_flops(module, batch)


class BatchFlops:
    """:func:`training_flops` for every batch of a fit: a measured count is taken once per batch
    shape and set of trainable parameters (gradual unfreezing changes the backward's work)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.parameters: list[nn.Parameter] | None = (
            None  # listed once: walking the modules costs ~50 µs
        )
        self.measured: dict[Any, float] = {}

    def __call__(self, batch: Any) -> float:
        hook = getattr(self.module, "training_flops", None)
        analytic = hook(batch) if callable(hook) else None
        if analytic is not None:
            return float(analytic)
        if self.parameters is None:
            self.parameters = list(self.module.parameters())
        key = (_signature(batch), tuple(p.requires_grad for p in self.parameters))
        if key not in self.measured:
            self.measured[key] = measured_training_flops(self.module, batch)
        return self.measured[key]
