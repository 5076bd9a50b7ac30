"""What a run needs to continue exactly where it stopped: ``ckpt_path=`` after a kill gives the
weights the run would have had without the kill, bit for bit on CPU.

Lightning's checkpoint holds the weights, the optimizer, the schedules and the loops' counters.
:class:`ResumeState` adds what it leaves out and takes care of when it is put back:

* the random number generators: torch's (CPU, and CUDA's when it is in use), numpy's and
  Python's, which the augmentations and dropout draw from. They are saved as the next
  training step would find them and restored when training starts (``on_train_start``:
  after Lightning's seeding, the sanity check and the first batch's loading, before the first
  step). Validation draws from them too (SimCLR's views), so each validation runs on a copy of
  the state and leaves the training's untouched: a step's random numbers do not depend on how
  often, or whether, the run validated in between;
* the training order: the epoch's permutation (:class:`ptft.data.loaders.EpochSampler`, a
  function of the seed and the epoch) and how far into it the run was, so that a run resumed
  mid-epoch goes on with the examples it had not yet seen, in the same order;
* a checkpoint written when an epoch ended is resumed as the start of the next epoch (see
  :func:`start_next_epoch`: Lightning 2.6 would otherwise stop a run with ``max_steps`` one
  epoch early, or skip the next epoch);
* SIGTERM (a cluster's preemption): Lightning stops after the current batch; the run then
  writes ``last.ckpt`` (:meth:`ResumeState.on_exception`) and exits saying how to resume.

Models keep generators of their own in their own hooks (the masked LM's masks:
:class:`ptft.objectives.masked_lm.MaskedLM`). :class:`StepCheckpoint` writes ``last.ckpt``
every N optimizer steps, for runs that may be killed without warning (``SIGKILL``, a node
lost): they resume from at most N steps back.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ptft.errors import ConfigError

log = logging.getLogger(__name__)

#: the checkpoint key of what :class:`ResumeState` saves
RESUME_KEY = "ptft_resume"


# ------------------------------------------------------------------------------ random state
def random_state() -> dict[str, Any]:
    """The global random number generators' states, as plain containers and tensors (a
    checkpoint stays loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Put back what :func:`random_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda) != count:
            log.warning(
                "the checkpoint holds the random state of %d CUDA devices and this run has %d: "
                "restoring the first %d",
                len(cuda),
                count,
                min(len(cuda), count),
            )
        for index, device_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(device_state, device=index)


# ------------------------------------------------------------------------------- loop state
def _zero(progress: dict[str, Any]) -> None:
    for key in progress:
        progress[key] = 0


def start_next_epoch(loops: dict[str, Any]) -> bool:
    """Turn the loop state of a checkpoint written when a training epoch had ended (its batches
    all run, ``on_train_epoch_end`` or later) into the state at the start of the next epoch;
    True when it did.

    Lightning 2.6 counts such an epoch as not yet completed, and a run with ``max_steps``
    always restarts its loops: it then runs the epoch's end once more (counting the epoch
    twice, so a run with ``max_epochs`` too stops one epoch early) or, when the checkpoint
    was written after the epoch was counted (SIGTERM at the end of an epoch), takes the old
    epoch's batch count for the new one's and skips that epoch. The counters here are those
    Lightning itself sets when an epoch starts without a restart.
    """
    fit = loops.get("fit_loop") if isinstance(loops, dict) else None
    if not fit or "epoch_progress" not in fit:
        return False
    epochs = fit["epoch_progress"]
    for part in ("current", "total"):
        p = epochs[part]
        if not (p["ready"] == p["started"] == p["processed"]) or p["completed"] not in (
            p["processed"] - 1,
            p["processed"],
        ):
            return False
    for part in ("current", "total"):
        epochs[part]["completed"] = epochs[part]["processed"]
    batches = fit.get("epoch_loop.batch_progress")
    if batches:
        _zero(batches["current"])
        batches["is_last_batch"] = False
    schedules = fit.get("epoch_loop.scheduler_progress")
    if schedules:
        _zero(schedules["current"])
    optimizer = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer")
    if optimizer:
        _zero(optimizer["step"]["current"])
        _zero(optimizer["zero_grad"]["current"])
    validation = fit.get("epoch_loop.val_loop.batch_progress")
    if validation:
        _zero(validation["total"])
        _zero(validation["current"])
        validation["is_last_batch"] = False
    return True


# --------------------------------------------------------------------------------- last.ckpt
def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` goes: next to the checkpoint callback's files, else under the run's
    ``checkpoints/``."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        return Path(callback.dirpath) / name
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def save_last(trainer: L.Trainer) -> Path:
    """Write ``last.ckpt`` now (every rank calls; rank 0 writes) and return its path. Lightning's
    checkpoint callback is told, so that its own ``save_last`` rewrites this file rather than
    starting a ``last-v1.ckpt``."""
    path = last_checkpoint_path(trainer)
    trainer.save_checkpoint(str(path))
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath and hasattr(callback, "last_model_path"):
        callback.last_model_path = str(path)
    return path


def check_writable(directory: Path, key: str) -> None:
    """Fail now, in one line, when checkpoints cannot be written to ``directory`` (made when
    missing): not at the first checkpoint, after the work it was to keep."""
    probe = directory / f".ptft-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{key}={directory}: checkpoints cannot be written there ({reason}); make it "
            "writable or choose another directory (hydra.run.dir=… or paths.log_dir=…)"
        ) from err


# -------------------------------------------------------------------------------- callbacks
class ResumeState(L.Callback):
    """Saves and restores what an exact resume needs beyond Lightning's checkpoint (see the
    module), writes ``last.ckpt`` on SIGTERM, and checks before training that checkpoints can be
    written. ``preempted``: the checkpoint written on SIGTERM (None until then)."""

    def __init__(self) -> None:
        self.preempted: Path | None = None
        self._restore: dict[str, Any] | None = None  # random state to put back at train start
        self._training_state: dict[str, Any] | None = None  # the training's, while validating
        self._next_epoch = False  # the checkpoint was written when an epoch had ended

    # -- checks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.preempted = None
        callback = trainer.checkpoint_callback
        if trainer.is_global_zero and not trainer.fast_dev_run and callback is not None:
            if callback.dirpath:
                check_writable(Path(callback.dirpath), "callbacks.model_checkpoint.dirpath")

    # -- saving -------------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoint[RESUME_KEY] = {
            # saved during validation (SIGTERM, a checkpoint on validation end): the training's;
            # saved by a resumed run before it trained: the state it is to restore
            "random": self._training_state or self._restore or random_state(),
            "data": self._data_position(trainer),
        }

    @staticmethod
    def _data_position(trainer: L.Trainer) -> dict[str, int] | None:
        """The training order's seed, epoch and the position in it of the next example."""
        from ptft.data.loaders import EpochSampler

        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, EpochSampler):
            return None
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if batches >= trainer.num_training_batches:  # the epoch's batches are done: the next
            return {"seed": sampler.seed, "epoch": sampler.epoch + 1, "start": 0}
        start = batches * (loader.batch_size or 1)
        return {"seed": sampler.seed, "epoch": sampler.epoch, "start": start}

    # -- loading ------------------------------------------------------------------------
    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # before Lightning restores its loops from the same dictionary
        self._next_epoch = start_next_epoch(checkpoint.get("loops") or {})
        saved = checkpoint.get(RESUME_KEY)
        if saved is None:
            log.warning(
                "the checkpoint holds no random state or data position (an older ptft wrote "
                "it): the run resumes, but not exactly as it would have gone on"
            )
            return
        self._restore = saved["random"]
        datamodule = trainer.datamodule
        if saved.get("data") and hasattr(datamodule, "resume_order"):
            datamodule.resume_order(saved["data"])
            # Lightning warns of a loader without state_dict(); the order is restored here
            warnings.filterwarnings("ignore", ".*your dataloader is not resumable.*")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restore is not None:
            set_random_state(self._restore)
            self._restore = None
        if self._next_epoch:
            # a new epoch starts: nothing in it to restart (with max_steps, Lightning would
            # restart it anyway, and count one batch too many for its loggers' steps)
            trainer.fit_loop.epoch_loop.restarting = False
            self._next_epoch = False

    # -- validation leaves the training's random numbers alone ---------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._training_state = random_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._training_state is not None:
            set_random_state(self._training_state)
            self._training_state = None

    # -- SIGTERM ------------------------------------------------------------------------
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == 0:
            return  # nothing trained yet: starting again is the same
        self.preempted = save_last(trainer)
        log.info("SIGTERM: wrote %s at step %d", self.preempted, trainer.global_step)


class StepCheckpoint(L.Callback):
    """Writes ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (None or 0: never), so
    that a run killed without warning resumes from at most that many steps back."""

    def __init__(self, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ConfigError(
                f"callbacks.step_checkpoint.every_n_train_steps={every_n_train_steps}: give a "
                "number of steps >= 1, or null for no step checkpoints"
            )
        self.every_n_train_steps = every_n_train_steps or 0
        self._last_step = -1

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step, every = trainer.global_step, self.every_n_train_steps
        if not every or step == 0 or step % every or step == self._last_step:
            return  # with gradient accumulation, several batches end at one step
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._last_step = step
        save_last(trainer)
