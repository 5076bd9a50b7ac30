"""Kill and resume: ``ckpt_path=`` continues a run as if it had not stopped (bit-identical
weights on CPU, vision and text), checkpoints are written whole, an unwritable checkpoint
directory stops the run in one line, and SIGTERM leaves a resumable ``last.ckpt``."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from ptft.errors import ConfigError
from ptft.runs.checkpoint_io import AtomicCheckpointIO
from ptft.runs.fit import SIGTERM_EXIT, train
from tests.helpers import QUIET, compose_train

#: 6 batches of 64 digits per epoch, 3 epochs (max_steps and max_epochs both set), validation
#: and a checkpoint at every epoch's end, a step checkpoint every 4 steps; augmentations and
#: dropout draw random numbers every step
VISION = [
    "experiment=digits_classifier",
    "logger=none",
    *QUIET,
    "callbacks.throughput=null",
    "test=false",
    "model.head_dropout=0.2",
    "trainer.max_steps=18",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=6",
    "trainer.check_val_every_n_epoch=1",
    "trainer.val_check_interval=1.0",
    "trainer.limit_val_batches=1",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.step_checkpoint.every_n_train_steps=4",
]

#: a tiny BERT (random masks, dropout): 2 epochs of 8 batches, a step checkpoint every 3 steps
TEXT = [
    "experiment=pydoc_bert",
    "data.vocab_size=512",
    "data.block_size=32",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "model.backbone.dim=32",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.dropout=0.1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=1",
    "logger=none",
    *QUIET,
    "callbacks.throughput=null",
    "test=false",
    "callbacks.step_checkpoint.every_n_train_steps=3",
]


class Killed(Exception):
    """What :class:`KillAt` raises: the run dies there, as under ``kill -9``."""


class KillAt(L.Callback):
    """Kills the run when training step ``step`` is about to start (after ``step`` steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step + 1}")


def kill_at(step: int) -> list[str]:
    return [f"+callbacks.kill._target_={__name__}.KillAt", f"+callbacks.kill.step={step}"]


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_weights(expected: dict, actual: dict) -> None:
    assert actual["global_step"] == expected["global_step"]
    assert actual["epoch"] == expected["epoch"]
    a, b = expected["state_dict"], actual["state_dict"]
    assert a.keys() == b.keys()
    differ = {
        k: (a[k].double() - b[k].double()).abs().max().item()
        for k in a
        if not torch.equal(a[k], b[k])
    }
    assert not differ, (
        f"{len(differ)} of {len(a)} tensors differ, e.g. {sorted(differ.items())[:3]}"
    )


def kill_and_resume(overrides: list[str], step: int, out: Path) -> tuple[dict, dict]:
    """Run ``overrides`` killed before step ``step + 1``, then resume it from its ``last.ckpt``:
    (the checkpoint it resumed from, the resumed run's final checkpoint)."""
    with pytest.raises(Killed):
        train(compose_train([*overrides, *kill_at(step)], out / "killed"))
    ckpt = out / "killed" / "checkpoints" / "last.ckpt"
    resumed_from = torch.load(ckpt, weights_only=True)
    train(compose_train([*overrides, f"ckpt_path={ckpt}"], out / "resumed"))
    return resumed_from, last(out / "resumed")


# ------------------------------------------------------------------------------- vision
@pytest.fixture(scope="module")
def vision_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vision")
    train(compose_train(VISION, out))
    return out


def test_a_vision_run_killed_mid_epoch_resumes_bit_exactly(vision_run, tmp_path):
    resumed_from, final = kill_and_resume(VISION, step=9, out=tmp_path)
    # the step checkpoint of step 8: epoch 1, after 2 of its 6 batches of 64
    assert resumed_from["global_step"] == 8
    assert resumed_from["ptft_resume"]["data"] == {"seed": 42, "epoch": 1, "start": 2 * 64}
    assert_same_weights(last(vision_run), final)
    assert final["global_step"] == 18


def test_a_run_with_max_steps_and_max_epochs_resumed_from_an_epoch_checkpoint_ends_at_max_steps(
    vision_run, tmp_path
):
    epoch_0 = vision_run / "checkpoints" / "epoch_000.ckpt"
    assert torch.load(epoch_0, weights_only=True)["global_step"] == 6
    # Lightning alone counted epoch 0 twice and stopped at step 12, one epoch early
    train(compose_train([*VISION, f"ckpt_path={epoch_0}"], tmp_path))
    assert_same_weights(last(vision_run), last(tmp_path))


# --------------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def text_overrides(tmp_path_factory) -> list[str]:
    return [*TEXT, f"data.cache_dir={tmp_path_factory.mktemp('pydoc_cache')}"]


def test_a_masked_lm_killed_mid_epoch_resumes_bit_exactly(text_overrides, tmp_path):
    train(compose_train(text_overrides, tmp_path / "whole"))
    resumed_from, final = kill_and_resume(text_overrides, step=11, out=tmp_path)
    # step 9: epoch 1 after 1 of its 8 batches; its mask generator is the one of epoch 1
    assert resumed_from["global_step"] == 9
    assert resumed_from["ptft_resume"]["data"]["epoch"] == 1
    assert resumed_from["ptft_resume"]["data"]["start"] == 8
    assert resumed_from["ptft_mask_generator"]["epoch"] == 1
    assert_same_weights(last(tmp_path / "whole"), final)
    assert final["global_step"] == 16


# ------------------------------------------------------------------------------- SIGTERM
def test_sigterm_writes_a_resumable_checkpoint_and_says_how_to_resume(tmp_path):
    # a constant learning rate: the run's length (max_steps) changes nothing but where it ends
    overrides = [
        "experiment=digits_classifier",
        "logger=none",
        *QUIET,
        "callbacks.throughput=null",
        "test=false",
        "model/scheduler=constant",
        "trainer.limit_val_batches=0",
        "callbacks.step_checkpoint.every_n_train_steps=5",
    ]
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptft.train", *overrides, "trainer.max_steps=100000"]
        + [f"hydra.run.dir={run}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # training is under way: the first step checkpoint is there
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == SIGTERM_EXIT, stderr[-2000:]
    stopped = torch.load(ckpt, weights_only=True)
    step = stopped["global_step"]
    assert step >= 5  # stopped in training, after the first step checkpoint
    assert [line for line in stderr.splitlines() if "SIGTERM" in line] == [
        f"interrupted: stopped by SIGTERM at step {step}; resume with ckpt_path={ckpt} "
        "(and the same overrides)"
    ]
    assert "Traceback" not in stderr
    end = [f"trainer.max_steps={step + 6}"]
    train(compose_train([*overrides, *end], tmp_path / "whole"))
    train(compose_train([*overrides, *end, f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    assert_same_weights(last(tmp_path / "whole"), last(tmp_path / "resumed"))


# -------------------------------------------------------------------------- atomic writes
def test_a_failed_write_leaves_the_previous_checkpoint_whole_and_no_temporary_file(
    tmp_path, monkeypatch
):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.arange(10)}, path)
    before = path.read_bytes()

    def disk_full(obj, handle):  # half a checkpoint written, then the disk is full
        handle.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ConfigError) as error:
        io.save_checkpoint({"weights": torch.zeros(10)}, path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot write the checkpoint {path} (")
    assert os.strerror(errno.ENOSPC) in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


WRITER = """
import sys, torch
from ptft.runs.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
for i in range(1_000_000):  # until killed: 8 MB checkpoints, each tensor filled with i
    io.save_checkpoint({"i": i, "weights": torch.full((2_000_000,), float(i))}, path)
"""


def test_a_writer_killed_mid_write_never_leaves_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(path)])
    deadline = time.monotonic() + 120
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # several writes later, most likely in the middle of one
    proc.kill()
    proc.wait()
    ckpt = torch.load(path, weights_only=True)  # whole: it loads, and holds one write's values
    assert torch.equal(ckpt["weights"], torch.full((2_000_000,), float(ckpt["i"])))
    # the killed writer's temporary file is hidden, and the next write clears it away
    AtomicCheckpointIO().save_checkpoint({"i": -1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------------ unwritable directory
def _read_only(tmp_path: Path) -> Path:
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):  # root writes anyway
        pytest.skip("this user can write into a read-only directory")
    return directory / "checkpoints"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "checkpoints"


@pytest.mark.parametrize("where", [_read_only, _under_a_file], ids=["read-only", "under-a-file"])
def test_an_unwritable_checkpoint_directory_stops_the_run_before_training(where, tmp_path):
    dirpath = where(tmp_path)
    cfg = compose_train(
        [*VISION, f"callbacks.model_checkpoint.dirpath={dirpath}"], tmp_path / "run"
    )
    with pytest.raises(ConfigError) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"callbacks.model_checkpoint.dirpath={dirpath}: checkpoints cannot be written there ("
    )
    assert not list(tmp_path.rglob("*.ckpt"))
