"""Training runs: every experiment takes a step; checkpoints, precision, DDP, multiruns."""

from __future__ import annotations

import json

import pytest
import torch

from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train, run_cli

EXPERIMENTS = ["digits_autoencoder", "digits_simclr", "digits_classifier"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_fast_dev_run_step(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", "debug=fdr", *QUIET], tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert any(k.startswith("test/") for k in metrics)


def test_checkpoints_load_weights_only_and_record_the_run(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "trainer.max_steps=20",
            "trainer.val_check_interval=10",
            *QUIET,
        ],
        tmp_path,
    )
    metrics = train(cfg)
    files = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert {f.name for f in files} >= {"last.ckpt"} and len(files) == 2
    for f in files:
        ckpt = torch.load(f, weights_only=True)
        assert ckpt["ptft_backbone"]["config"]["_target_"] == "ptft.nn.cnn.CNN"
        assert ckpt["ptft_run"]["data"]["_target_"] == "ptft.data.digits.DigitsDataModule"
        assert ckpt["hyper_parameters"]["num_classes"] == 10
    # TensorBoard events exist, and the returned metrics are the final ones
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "val/acc" in metrics


def test_last_checkpoint_holds_the_final_weights_even_when_the_best_came_first(tmp_path):
    # monitoring the maximum val/loss makes the first validation the best one; Lightning alone
    # would then leave last.ckpt at step 5
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "trainer.max_steps=15",
            "trainer.val_check_interval=5",
            "callbacks.model_checkpoint.mode=max",
            "logger=none",
            *QUIET,
        ],
        tmp_path,
    )
    train(cfg)
    best = [f for f in (tmp_path / "checkpoints").glob("*.ckpt") if f.name != "last.ckpt"]
    assert len(best) == 1 and torch.load(best[0], weights_only=True)["global_step"] == 5
    assert (
        torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15
    )


def test_bf16_mixed_precision_trains_an_epoch(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_simclr",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            "trainer.precision=bf16-mixed",
            "logger=none",
            *QUIET,
        ],
        tmp_path,
    )
    trainer_losses = train(cfg)
    assert torch.isfinite(torch.tensor(trainer_losses["val/loss"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # one epoch of 1293 // 256 steps (last.ckpt, written when fit ends, counts the epoch as done)
    assert ckpt["global_step"] == 1293 // 256
    assert torch.load(tmp_path / "checkpoints" / "epoch_000.ckpt", weights_only=True)["epoch"] == 0
    assert all(
        v.dtype == torch.float32 for k, v in ckpt["state_dict"].items() if v.is_floating_point()
    )


def test_ddp_on_two_cpu_processes_trains_an_epoch(tmp_path):
    result = run_cli(
        [
            "ptft.train",
            "experiment=digits_simclr",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            "logger=csv",
            "test=false",
            "hydra.run.dir=run",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # 1293 images, 2 processes, batch 256 each: 1293/2 → 647 per process → 2 steps
    assert ckpt["global_step"] == 2
    assert (tmp_path / "run" / "csv" / "metrics.csv").read_text().count("val/loss") == 1


def test_multirun_makes_one_run_directory_per_job(tmp_path):
    result = run_cli(
        [
            "ptft.train",
            "-m",
            "experiment=digits_classifier",
            "model.optimizer.lr=1e-3,3e-3",
            "trainer.max_steps=10",
            "trainer.val_check_interval=5",
            "test=false",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "digits_classifier" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        lrs.append(ckpt["hyper_parameters"]["optimizer"]["lr"])
    assert lrs == [1e-3, 3e-3]


def test_eval_reproduces_the_test_metrics_of_train(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "trainer.max_steps=30",
            "trainer.val_check_interval=10",
            "logger=none",
            *QUIET,
        ],
        tmp_path / "train",
    )
    metrics = train(cfg)
    ckpt = torch.load(tmp_path / "train" / "checkpoints" / "last.ckpt", weights_only=True)
    best = next(p for p in (tmp_path / "train" / "checkpoints").glob("epoch_*.ckpt"))
    result = run_cli(
        ["ptft.eval", f"ckpt_path={best}", "hydra.run.dir=eval", *QUIET[2:]], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert ckpt["ptft_run"]["model"]["_target_"] == "ptft.tasks.classifier.Classifier"


def test_resume_with_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = run_cli(["ptft.train", "ckpt_path=nowhere.ckpt", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: ckpt_path=nowhere.ckpt: no such checkpoint file; pass the .ckpt to resume from"
    )
