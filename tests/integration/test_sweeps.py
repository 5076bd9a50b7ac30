"""Sweeps: a failed job is recorded and the sweep goes on, the summary ranks every job,
Optuna searches and resumes, the joblib and submitit launchers run jobs, and a missing plugin
is a one-line error."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from omegaconf import OmegaConf

from ptft import cli
from ptft.callbacks.finite_loss import FiniteLoss, NonFiniteLossError
from ptft.config import resolvers
from ptft.config.validate import validate
from ptft.sweeps import job as sweep
from ptft.sweeps.summary import SweepSummary
from tests.helpers import QUIET, run_cli

#: the tests of the plugins need the sweep extra (.ci/run installs it)
needs_plugins = pytest.mark.skipif(
    any(not cli.is_installed(m) for p in cli.PLUGINS for m in p.modules),
    reason="the sweep plugins are not installed: pip install -e '.[sweep]'",
)
#: one tiny job: one batch of each stage, nothing logged
TINY = ["debug=fdr", "logger=none", *QUIET]


def multirun(
    tmp_path: Path,
    *overrides: str,
    sweep_dir: str = "sweep",
    timeout: float = 300,
    env: dict | None = None,
):
    """``ptft-train -m`` of tiny jobs in ``tmp_path`` with the given overrides, into
    ``sweep_dir``."""
    return run_cli(
        ["ptft.train", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", **(env or {})},
        timeout=timeout,
    )


def statuses(sweep_dir: Path) -> dict[str, dict]:
    """job directory name → its job_status.json"""
    return {
        p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{sweep.STATUS_FILE}")
    }


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ failed jobs
def test_a_failed_job_is_recorded_and_the_other_jobs_finish(tmp_path):
    # job 0 trains; job 1 has a learning rate AdamW refuses; job 2 diverges at its second step
    result = multirun(
        tmp_path,
        "trainer.fast_dev_run=3",
        "model.scheduler=null",
        "model.optimizer.lr=1e-3,-1,1e30",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    jobs = statuses(sweep_dir)
    assert {k: v["status"] for k, v in jobs.items()} == {"0": "ok", "1": "failed", "2": "failed"}
    assert jobs["0"]["value"] == jobs["0"]["metrics"]["val/loss"] and math.isfinite(
        jobs["0"]["value"]
    )
    assert "model.optimizer.lr=-1" in jobs["1"]["overrides"]
    assert "Invalid learning rate: -1" in jobs["1"]["error"]  # the value as given: -1, not -1.0
    # the first loss comes from the initial weights; the one after the first update is not finite
    assert jobs["2"]["error"].startswith("NonFiniteLossError: train/loss is")
    assert (
        "at step 1 (epoch 0, batch 1)" in jobs["2"]["error"]
        and "lower model.optimizer.lr" in jobs["2"]["error"]
    )
    # each failure's traceback is in that job's own log
    assert "Traceback" in (sweep_dir / "1" / "train.log").read_text()
    assert "Traceback" not in (sweep_dir / "0" / "train.log").read_text()
    # the summary: the finished job first, then the failures in job order, with their errors
    rows = summary_rows(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "ok"),
        ("1", "failed"),
        ("2", "failed"),
    ]
    assert float(rows[0]["val/loss"]) == pytest.approx(jobs["0"]["metrics"]["val/loss"])
    assert rows[1]["error"] == jobs["1"]["error"] and rows[1]["val/loss"] == ""
    markdown = (sweep_dir / "sweep_summary.md").read_text()
    assert (
        "3 jobs: 1 ok, 2 failed" in markdown
        and "| 3 | 2 | failed | model.optimizer.lr=1e+30 |" in markdown
    )


def test_a_ddp_worker_process_lets_the_error_through_and_records_nothing(tmp_path):
    result = multirun(tmp_path, "model.optimizer.lr=-1", env={"PTFT_DDP_WORKER": "1"})
    assert result.returncode != 0 and "Invalid learning rate" in result.stderr
    assert not list((tmp_path / "sweep").glob(f"**/{sweep.STATUS_FILE}"))
    assert not (tmp_path / "sweep" / "sweep_summary.csv").exists()


@needs_plugins
def test_optuna_takes_the_worst_value_of_a_failed_job_and_ranks_it_last():
    import optuna

    for mode, values in {"min": [0.7, 0.2], "max": [0.2, 0.7]}.items():
        study = optuna.create_study(direction=resolvers.direction(mode))
        for value in [sweep.worst_value(mode), *values]:
            study.tell(study.ask(), value)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
        assert study.best_trial.number == 2  # the failed trial 0 never wins
    assert sweep.worst_value("min") == math.inf and sweep.worst_value("max") == -math.inf


# ---------------------------------------------------------------------- summary
def fake_job(
    sweep_dir: Path, name: str, overrides: list[str], status: sweep.JobStatus | None
) -> None:
    job_dir = sweep_dir / name
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (job_dir / ".hydra" / "hydra.yaml").write_text(
        OmegaConf.to_yaml({"hydra": {"job": {"num": int(name)}}})
    )
    if status is not None:
        status.write(job_dir)


def test_the_summary_ranks_jobs_best_first_then_failed_then_missing(tmp_path):
    def done(num, value, error=None):
        return sweep.JobStatus(
            job=num,
            status="failed" if error else "ok",
            overrides=[f"x={num}", "common=1"],
            optimized_metric="val/acc",
            monitor_mode="max",
            value=None if error else value,
            metrics={} if error else {"val/acc": value, "test/acc": value - 0.1},
            error=error,
            duration_s=1.0,
        )

    fake_job(tmp_path, "0", ["x=0", "common=1"], done(0, 0.5))
    fake_job(tmp_path, "1", ["x=1", "common=1"], done(1, None, error="ValueError: bad | value"))
    fake_job(tmp_path, "2", ["x=2", "common=1"], None)  # killed: no status file
    fake_job(tmp_path, "3", ["x=3", "common=1"], done(3, 0.9))
    SweepSummary().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    )

    rows = summary_rows(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("3", "ok"),
        ("0", "ok"),
        ("1", "failed"),
        ("2", "missing"),
    ]
    assert list(rows[0])[:6] == ["rank", "job", "status", "overrides", "val/acc", "test/acc"]
    assert (
        float(rows[0]["test/acc"]) == pytest.approx(0.8) and rows[3]["overrides"] == "x=2 common=1"
    )
    assert "job_status.json" in rows[3]["error"]
    table = (tmp_path / "sweep_summary.md").read_text()
    assert "4 jobs: 2 ok, 1 failed, 1 missing" in table and "Every job: `common=1`" in table
    # one row per job; the shared override is said once, and a pipe in an error is escaped
    assert "| 1 | 3 | ok | x=3 | 0.9 | 0.8 | 1 |  |" in table
    assert "| 3 | 1 | failed | x=1 |  |  | 1 | ValueError: bad \\| value |" in table


def test_no_summary_when_no_job_wrote_a_status(tmp_path):
    # a multirun of another entry point (ptft-eval -m …): job directories, no status files
    fake_job(tmp_path, "0", ["x=0"], None)
    SweepSummary().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]


# ----------------------------------------------------------------- finite loss
class DivergesAt(L.LightningModule):
    """A linear model whose loss is NaN from batch ``bad_batch`` on."""

    def __init__(self, bad_batch: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if batch_idx >= self.bad_batch else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_non_finite_loss_stops_training_at_that_step_before_the_update():
    model = DivergesAt(bad_batch=3)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=2
    )
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[FiniteLoss()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(
        NonFiniteLossError, match=r"train/loss is nan at step 3 \(epoch 0, batch 3\)"
    ) as err:
        trainer.fit(model, data)
    assert "lower model.optimizer.lr (now 0.05)" in str(err.value)
    assert trainer.global_step == 3 and all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------- optuna
SEARCH_SPACES = [
    ("optuna", "experiment=digits_classifier", "maximize"),
    ("digits_optuna", "experiment=digits_simclr", "maximize"),
    ("pydoc_optuna", "experiment=pydoc_gpt", "minimize"),
]


@needs_plugins
@pytest.mark.parametrize("search, experiment, direction", SEARCH_SPACES)
def test_every_search_space_names_keys_of_its_experiment(search, experiment, direction):
    resolvers.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=cli.config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hparams_search={search}", experiment], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.direction == direction and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # a trial's overrides (each parameter at a point of its space) are keys the code takes
    parser = OverridesParser.create()
    trial = []
    for key, space in cfg.hydra.sweeper.params.items():
        sweep = parser.parse_override(f"{key}={space}").value()
        point = sweep.list[0] if isinstance(sweep, ChoiceSweep) else sweep.start
        trial.append(f"{key}={point}")
    with initialize_config_dir(config_dir=cli.config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[experiment, *trial, "paths.output_dir=unused"])
    validate(cfg)


@needs_plugins
def test_an_optuna_study_runs_writes_its_best_parameters_and_resumes_from_sqlite(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    runs = []
    for launch in ("first", "second"):
        result = multirun(
            tmp_path,
            "hparams_search=digits_optuna",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=digits",
            sweep_dir=launch,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(statuses(tmp_path / launch))
    # the first launch: 3 trials, and its best parameters are those of its best job
    assert sorted(runs[0]) == ["0", "1", "2"] and all(s["status"] == "ok" for s in runs[0].values())
    best_job = max(runs[0].values(), key=lambda s: s["metrics"]["val/knn_acc"])
    written = OmegaConf.load(tmp_path / "first" / "optimization_results.yaml")
    assert written.best_value == pytest.approx(best_job["metrics"]["val/knn_acc"])
    searched = {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.temperature",
        "model.augment.noise_std",
        "data.batch_size",
    }
    assert set(written.best_params) == searched
    assert {f"{k}={v}" for k, v in written.best_params.items()} <= set(best_job["overrides"])
    # the second launch continued the same study
    import optuna

    study = optuna.load_study(study_name="digits", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    all_values = [s["metrics"]["val/knn_acc"] for run in runs for s in run.values()]
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(all_values))


# -------------------------------------------------------------------- launchers
@needs_plugins
def test_the_joblib_launcher_runs_two_jobs_in_parallel_processes(tmp_path):
    result = multirun(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.optimizer.lr=1e-3,2e-3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    jobs = statuses(tmp_path / "sweep")
    assert {k: v["status"] for k, v in jobs.items()} == {"0": "ok", "1": "ok"}
    assert [o for o in jobs["1"]["overrides"] if o.startswith("model.optimizer.lr")] == [
        "model.optimizer.lr=0.002"
    ]
    assert [r["status"] for r in summary_rows(tmp_path / "sweep")] == ["ok", "ok"]


@needs_plugins
def test_the_submitit_local_launcher_runs_a_job(tmp_path):
    result = multirun(
        tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = statuses(tmp_path / "sweep")
    assert jobs["0"]["status"] == "ok" and math.isfinite(jobs["0"]["value"])
    # the job went through submitit: its pickled job and its result are in the submitit folder
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))
    assert summary_rows(tmp_path / "sweep")[0]["status"] == "ok"


@needs_plugins
def test_the_slurm_launcher_takes_nodes_tasks_and_gpus_from_the_trainer():
    resolvers.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=cli.config_dir(), version_base="1.3"):
        overrides = [
            "hydra/launcher=slurm",
            "trainer=gpu",
            "trainer.devices=4",
            "trainer.num_nodes=2",
        ]
        gpu = compose("train", overrides=overrides, return_hydra_config=True).hydra.launcher
        cpu = compose(
            "train", overrides=["hydra/launcher=slurm", "trainer=cpu"], return_hydra_config=True
        ).hydra.launcher
    assert (gpu.nodes, gpu.tasks_per_node, gpu.gpus_per_node) == (2, 4, 4)
    assert gpu._target_.endswith("SlurmLauncher")
    assert (cpu.nodes, cpu.tasks_per_node, cpu.gpus_per_node) == (1, 1, None)


# --------------------------------------------------------------- missing plugins
@needs_plugins
@pytest.mark.parametrize(
    "arg, package",
    [
        ("hydra/launcher=joblib", "hydra-joblib-launcher"),
        ("hydra/launcher=submitit_slurm", "hydra-submitit-launcher"),
        ("hydra/launcher=slurm", "hydra-submitit-launcher"),
        ("hydra/sweeper=optuna", "hydra-optuna-sweeper"),
        ("hparams_search=digits_optuna", "hydra-optuna-sweeper"),
    ],
)
def test_a_missing_plugin_is_a_one_line_error(arg, package, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec

    def without_plugins(name, *args):
        return None if name.startswith("hydra_plugins.") else real_find_spec(name, *args)

    # installed: nothing to say
    assert cli.missing_plugin(["-m", arg, "model.optimizer.lr=1e-3"]) is None
    monkeypatch.setattr(importlib.util, "find_spec", without_plugins)
    assert cli.missing_plugin(["model.optimizer.lr=1e-3", "hydra/launcher=basic"]) is None
    monkeypatch.setattr(sys, "argv", ["ptft-train", "-m", arg])
    with pytest.raises(SystemExit) as exit_:
        cli.plugins_checked(lambda: pytest.fail("the entry point ran"))()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {arg} needs the package {package}, which is not installed: "
        "pip install 'ptft[sweep]'\n"
    )
