"""Training throughput and model FLOPs utilisation (MFU), logged while fitting and summed up at
its end.

Every ``trainer.log_every_n_steps`` optimizer steps the loggers get ``train/samples_per_sec``,
``train/tokens_per_sec`` (token batches only) and ``train/mfu`` (a fraction): rates over the
last ``window_size`` batches from Lightning's
:class:`~lightning.fabric.utilities.throughput.Throughput`, for all DDP processes together (one
process's rate × world size: each has the same batch size).
MFU is the training FLOPs per second of one device over its peak in the dtype the Trainer's
precision multiplies in (:func:`ptft.monitors.flops.peak_flops`); a batch's FLOPs are the model's
analytic count or are measured once per batch shape (:class:`ptft.monitors.flops.BatchFlops`).

The clock (``time.perf_counter``) counts training batches only: it stops for validation. A GPU
is synchronised only when a rate is logged and around validation, never on every step. When
fitting ends, rank 0 logs one line with the rates of the whole fit after its first batch
(start-up and the first batch's FLOPs measurement left out); they stay in ``summary``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.utilities.data import extract_batch_size

from ptft.errors import ConfigError
from ptft.monitors.flops import BatchFlops, Peak, compute_dtype, peak_flops

log = logging.getLogger(__name__)


def flop_rate(flops_per_sec: float) -> str:
    """``94.2 GFLOP/s``, ``989 TFLOP/s``: three significant digits in the unit that fits."""
    if flops_per_sec >= 1e12:
        return f"{flops_per_sec / 1e12:.3g} TFLOP/s"
    return f"{flops_per_sec / 1e9:.3g} GFLOP/s"


class TrainingThroughput(L.Callback):
    """Logs ``train/samples_per_sec``, ``train/tokens_per_sec`` and ``train/mfu``; one summary
    line at fit end.

    ``window_size``: batches the logged rates average over (None: one logging interval,
    ``log_every_n_steps × accumulate_grad_batches``).
    """

    def __init__(self, window_size: int | None = None) -> None:
        if window_size is not None and window_size < 2:
            raise ConfigError(
                f"callbacks.throughput.window_size={window_size}: a rate needs at least 2 batches; "
                "give 2 or more, or null for one logging interval"
            )
        self.window_size = window_size
        #: the whole fit's rates after its first batch (set on rank 0 and the others alike at fit
        #: end)
        self.summary: dict[str, float] = {}
        self.peak: Peak | None = None
        self._reset()

    def _reset(self) -> None:
        self.throughput: Throughput | None = None
        self._batch_flops: BatchFlops | None = None
        self._cuda = False
        self._train_time = 0.0  # training seconds before the current stretch of batches
        self._mark: float | None = None  # start of the current stretch; None while paused
        self._batches = self._samples = self._tokens = 0
        self._flops = 0.0
        self._count_tokens: bool | None = None
        self._count_flops = True
        self._first: tuple[float, int, int, float] | None = None  # clock and counts after batch 1
        self._last_logged_step = -1

    # ---------------------------------------------------------------------------- set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self.summary = {}
        if trainer.fast_dev_run:  # one step, no loggers: nothing to measure
            return
        device = trainer.strategy.root_device
        self._cuda = device.type == "cuda"
        self._batch_flops = BatchFlops(pl_module)
        dtype = compute_dtype(trainer.precision)
        try:
            self.peak = peak_flops(device, dtype)
        except RuntimeError as error:  # a dtype this device cannot multiply in
            log.warning(
                "throughput: no peak FLOP/s for %s in %s (%s); train/mfu is left out",
                device,
                dtype,
                error,
            )
            self.peak = None
        window = self.window_size or max(
            2, trainer.log_every_n_steps * trainer.accumulate_grad_batches
        )
        self.throughput = Throughput(
            available_flops=self.peak.flops if self.peak else None,
            world_size=trainer.world_size,
            window_size=window,
        )

    # ------------------------------------------------------------------------------ clock
    def _now(self, sync: bool) -> float:
        if sync and self._cuda:
            torch.cuda.synchronize()  # the GPU's queued work belongs to the time read here
        return time.perf_counter()

    def _elapsed(self, sync: bool) -> float:
        """Training seconds so far (validation left out)."""
        running = self._now(sync) - self._mark if self._mark is not None else 0.0
        return self._train_time + running

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.throughput is not None and self._mark is None:
            self._mark = time.perf_counter()  # the first batch, or the first after validation

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._mark is not None:
            self._train_time = self._elapsed(sync=True)
            self._mark = None

    # ----------------------------------------------------------------------------- counts
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.throughput is None or self._mark is None:
            return
        step, every = trainer.global_step, trainer.log_every_n_steps
        log_now = bool(every) and step % every == 0 and step != self._last_logged_step
        elapsed = self._elapsed(sync=log_now)
        self._batches += 1
        self._samples += extract_batch_size(batch)
        tokens = self._tokens_of(pl_module, batch)
        if self._count_tokens is None:
            self._count_tokens = tokens is not None
        if self._count_tokens:
            self._tokens += tokens or 0
        flops = self._flops_of(pl_module, batch)
        if flops is not None:
            self._flops += flops
        self.throughput.update(
            time=elapsed,
            batches=self._batches,
            samples=self._samples,
            lengths=self._tokens if self._count_tokens else None,
            flops=flops,
        )
        if self._first is None:
            self._first = (elapsed, self._samples, self._tokens, self._flops)
        if log_now:
            self._last_logged_step = step
            self._log(trainer, step)

    @staticmethod
    def _tokens_of(pl_module: L.LightningModule, batch: Any) -> int | None:
        hook = getattr(pl_module, "training_tokens", None)
        return hook(batch) if callable(hook) else None

    def _flops_of(self, pl_module: L.LightningModule, batch: Any) -> float | None:
        if not self._count_flops:
            return None
        try:
            return self._batch_flops(batch)
        except (
            Exception
        ) as error:  # a step that runs neither on the meta device nor on a copy: no MFU
            log.warning(
                "throughput: could not count the training FLOPs of %s (%s: %s); "
                "train/mfu is left out",
                type(pl_module).__name__,
                type(error).__name__,
                error,
            )
            self._count_flops = False
            return None

    # ---------------------------------------------------------------------------- logging
    def _log(self, trainer: L.Trainer, step: int) -> None:
        metrics = self.throughput.compute()
        world = trainer.world_size
        out = {}
        # Throughput's device/* rates are one process's; all processes run the same batch size
        if "device/samples_per_sec" in metrics:
            out["train/samples_per_sec"] = metrics["device/samples_per_sec"] * world
        if "device/items_per_sec" in metrics:
            out["train/tokens_per_sec"] = metrics["device/items_per_sec"] * world
        if "device/mfu" in metrics:
            out["train/mfu"] = metrics["device/mfu"]
        if out and trainer.is_global_zero:
            for logger in trainer.loggers:
                # Lightning writes a step's metrics under the count of steps before it
                logger.log_metrics(out, step=step - 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first is None:
            return
        seconds = self._elapsed(sync=True) - self._first[0]
        batches = self._batches - 1
        if batches < 1 or seconds <= 0:
            return
        world = trainer.world_size
        first_samples, first_tokens, first_flops = self._first[1:]
        self.summary = {
            "samples_per_sec": (self._samples - first_samples) / seconds * world,
            "seconds": seconds,
            "batches": float(batches),
            "world_size": float(world),
        }
        if self._count_tokens:
            self.summary["tokens_per_sec"] = (self._tokens - first_tokens) / seconds * world
        if self._count_flops and self._flops > first_flops:
            self.summary["flops_per_batch"] = (self._flops - first_flops) / batches
            if self.peak is not None:
                self.summary["mfu"] = (self._flops - first_flops) / seconds / self.peak.flops
        if trainer.is_global_zero:
            log.info("throughput: %s", self.describe())

    def describe(self) -> str:
        """The summary as one line: rates, MFU and the peak it divides by."""
        s = self.summary
        parts = [f"{s['samples_per_sec']:,.1f} samples/s"]
        if "tokens_per_sec" in s:
            parts.append(f"{s['tokens_per_sec']:,.0f} tokens/s")
        if "mfu" in s:
            parts.append(f"MFU {s['mfu']:.1%} of {flop_rate(self.peak.flops)} ({self.peak.source})")
        if "flops_per_batch" in s:
            parts.append(f"{s['flops_per_batch'] / 1e9:.4g} GFLOP a batch")
        processes = f" on {int(s['world_size'])} processes" if s["world_size"] > 1 else ""
        return (
            ", ".join(parts)
            + f"; {int(s['batches'])} batches in {s['seconds']:.3g} s of training{processes}"
        )
