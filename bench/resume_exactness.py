"""Kill and resume at random points: does ``ckpt_path=`` give the weights of the run that was
never stopped, bit for bit?

For each run (a small version of an experiment, with augmentations, dropout or random masks
drawing random numbers every step), the script trains it once uninterrupted, then 10 times
(``--points``) killed at a random step and resumed with ``ckpt_path=<killed run>/checkpoints/
last.ckpt``, and compares every tensor of the final weights with ``torch.equal``. A kill point
is a step ``k`` and a step-checkpoint interval ``n`` (``callbacks.step_checkpoint.
every_n_train_steps``), drawn with ``random.Random(--seed)``: the run dies as step ``k + 1`` is
about to start (an exception from a callback, as sudden as ``kill -9`` for the files: nothing
is saved on the way out), so it resumes from the last step checkpoint at or before ``k`` (or a
later epoch or validation checkpoint), mid-epoch or at an epoch's end, before or after a
validation. Everything runs in this process, on the CPU, one thread.

    python bench/resume_exactness.py                    # vision and text: ~3 min on 2 cores
    python bench/resume_exactness.py --runs all         # every objective and task below
    python bench/resume_exactness.py --runs simclr,gpt --points 3 --seed 1

It prints one line per point and ``<run>: N/10 bit-identical`` per run; the exit status is 1
when a point differs.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

#: quiet in-process runs: no logger, progress bar, summary or test; a thread, a CPU
QUIET = [
    "logger=none",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "callbacks.throughput=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "test=false",
]
#: a tiny transformer on short blocks of the docstring corpus
TINY_TEXT = [
    "data.vocab_size=512",
    "model.backbone.dim=32",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.dropout=0.1",
    "trainer.limit_val_batches=1",
]
#: run name → (overrides, total steps); every run validates during training
RUNS: dict[str, tuple[list[str], int]] = {
    # a task: augmentations and head dropout; validation every 15 steps, mid-epoch (20 a epoch)
    "classifier": (
        [
            "experiment=digits_classifier",
            "model.head_dropout=0.2",
            "trainer.max_steps=50",
            "trainer.val_check_interval=15",
            "trainer.limit_val_batches=2",
        ],
        50,
    ),
    # gradual unfreezing: a layer group more at steps 6, 11 and 16 (the step schedule: over
    # the first half of the 32), mid-epoch (8 batches an epoch here)
    "gradual_unfreeze": (
        [
            "experiment=digits_classifier",
            "model.finetune=gradual_unfreeze",
            "trainer.max_steps=32",
            "trainer.limit_train_batches=8",
            "trainer.check_val_every_n_epoch=1",
            "trainer.val_check_interval=1.0",
            "trainer.limit_val_batches=1",
        ],
        32,
    ),
    # an objective: two augmented views a batch (validation draws views too); 5 batches an epoch
    "simclr": (
        [
            "experiment=digits_simclr",
            "model.knn=null",
            "trainer.max_epochs=4",
            "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=1",
        ],
        20,
    ),
    "autoencoder": (
        [
            "experiment=digits_autoencoder",
            "model.backbone.dropout=0.2",
            "data.batch_size=256",
            "trainer.max_epochs=4",
            "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=1",
        ],
        20,
    ),
    # text: random masks (BERT) and dropout, 3 epochs of 10 batches, validation at each end
    "bert": (
        [
            "experiment=pydoc_bert",
            *TINY_TEXT,
            "data.block_size=32",
            "data.batch_size=8",
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=10",
        ],
        30,
    ),
    "gpt": (
        [
            "experiment=pydoc_gpt",
            *TINY_TEXT,
            "data.block_size=32",
            "data.batch_size=8",
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=10",
        ],
        30,
    ),
    # text tasks: max_steps, validation every 10 steps
    "package_classifier": (
        [
            "experiment=pydoc_package_classifier",
            *TINY_TEXT,
            "data.max_length=32",
            "model.backbone.max_positions=32",
            "data.batch_size=16",
            "trainer.max_steps=30",
            "trainer.val_check_interval=10",
        ],
        30,
    ),
    "name_generator": (
        [
            "experiment=pydoc_name_generator",
            *TINY_TEXT,
            "data.max_length=48",
            "model.backbone.max_positions=48",
            "data.batch_size=16",
            "trainer.max_steps=30",
            "trainer.val_check_interval=10",
        ],
        30,
    ),
}
#: what "vision" and "text" stand for in --runs
GROUPS = {"vision": ["classifier"], "text": ["bert"], "all": list(RUNS)}
#: step-checkpoint intervals a kill point draws from
INTERVALS = (1, 2, 3, 5)


class Killed(Exception):
    """The run died here."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(self.step)


def final_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def compare(expected: dict, actual: dict) -> tuple[bool, float]:
    """(every tensor equal and the same step, the largest absolute difference)."""
    a, b = expected["state_dict"], actual["state_dict"]
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a) if a else 0.0
    same = (
        a.keys() == b.keys()
        and all(torch.equal(a[k], b[k]) for k in a)
        and expected["global_step"] == actual["global_step"]
    )
    return same, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="vision,text", help="names, vision, text or all")
    parser.add_argument("--points", type=int, default=10, help="kill points a run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument(
        "--out", default=None, help="keep the runs there (default: a temporary folder, removed)"
    )
    args = parser.parse_args()
    names = [n for part in args.runs.split(",") for n in GROUPS.get(part, [part])]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}, vision, text, all")

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptft import config
    from ptft.cli import config_dir
    from ptft.runs import fit
    from ptft.runs.console import quiet_libraries

    config.register()
    quiet_libraries()
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("lightning", "lightning.pytorch", "ptft"):
        logging.getLogger(name).setLevel(logging.ERROR)

    kill: list[int] = []  # the step the next run dies at (empty: it does not)
    build_trainer = fit.build_trainer

    def with_kill(cfg, callbacks=()):  # the one way in for a callback the config does not name
        return build_trainer(cfg, [*callbacks, *(KillAt(s) for s in kill)])

    fit.build_trainer = with_kill

    def run(overrides: list[str], out: Path) -> None:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"paths.output_dir={out}"])
        fit.train(cfg)

    root = Path(args.out or tempfile.mkdtemp(prefix="resume_exactness_"))
    cache = root / "pydoc_cache"
    failed = False
    for name in names:
        overrides, steps = RUNS[name]
        overrides = [*overrides, *QUIET]
        if overrides[0].startswith("experiment=pydoc"):  # one corpus and tokenizer cache
            overrides.append(f"data.cache_dir={cache}")
        draw = random.Random(f"{args.seed}:{name}")
        points = []
        for _ in range(args.points):
            every = draw.choice(INTERVALS)
            points.append((draw.randint(every, steps - 1), every))
        start = time.monotonic()
        whole = root / name / "whole"
        # step checkpoints change nothing in a run: the reference has none
        run(overrides, whole)
        reference = final_checkpoint(whole)
        identical = 0
        for i, (step, every) in enumerate(points):
            out = root / name / f"point{i}"
            interval = [f"callbacks.step_checkpoint.every_n_train_steps={every}"]
            kill[:] = [step]
            try:
                run([*overrides, *interval], out / "killed")
                raise RuntimeError(f"{name}: the run was not killed at step {step}")
            except Killed:
                pass
            finally:
                kill.clear()
            ckpt = out / "killed" / "checkpoints" / "last.ckpt"
            resumed_from = torch.load(ckpt, weights_only=True)["global_step"]
            run([*overrides, *interval, f"ckpt_path={ckpt}"], out / "resumed")
            same, worst = compare(reference, final_checkpoint(out / "resumed"))
            identical += same
            print(
                f"  {name}: killed after step {step} (step checkpoints every {every}), resumed "
                f"from step {resumed_from}: {'bit-identical' if same else 'DIFFERENT'}"
                f" (max |diff| {worst:.3g})",
                flush=True,
            )
        failed |= identical != len(points)
        print(
            f"{name}: {identical}/{len(points)} bit-identical "
            f"({steps} steps; {time.monotonic() - start:.0f} s)",
            flush=True,
        )
    if args.out:
        print(f"runs under {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
