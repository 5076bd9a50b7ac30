"""Faults in long work: a study or a sweep started again in its own folder skips what finished,
a label fraction keeps every class, and debug=fdr writes what the docs say."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ptft import config
from ptft.cli import config_dir, run_config_error
from ptft.data.images import label_subset, stratified_split
from ptft.errors import ConfigError
from ptft.runs.fit import train as real_train
from ptft.study import runner
from ptft.sweeps import job as sweep
from tests.helpers import QUIET, run_cli

# ------------------------------------------------------------------ the study
#: one task, one fraction, one seed, two methods (one needs the pretraining), a few steps each
STUDY = [
    "tasks.digits.label_fractions=[0.1]",
    "tasks.digits.seeds=1",
    "tasks.digits.methods=[scratch,linear_probe]",
    # the one-arm form: pretrain/ and finetune/<task>/fraction_<f>/<method>/ as before arms
    "pretrain.arms=null",
    'pretrain.overrides=["experiment=digits_simclr","trainer.max_steps=2",'
    '"trainer.limit_val_batches=0","test=false","logger=none",'
    '"callbacks.rich_progress_bar=null","callbacks.rich_model_summary=null",'
    '"callbacks.embedding_projector=null","callbacks.throughput=null","data.batch_size=64",'
    '"trainer.enable_progress_bar=false","trainer.enable_model_summary=false"]',
    'tasks.digits.overrides=["experiment=digits_classifier","trainer.max_steps=3",'
    '"trainer.limit_val_batches=1","logger=none"]',
]


#: (the study's folder name, a stage's directory) → every final metric its run returned
METRICS: dict[tuple[str, str], dict[str, float]] = {}


class Killed(BaseException):
    """A kill in the middle of a study (not an Exception: nothing may catch it on the way)."""


def run_study(out: Path, overrides: list[str], monkeypatch, fail_at: int | None = None):
    """Run the study into ``out`` in this process; returns the stage directories ``train`` was
    called for, in order (and records what each returned in ``METRICS``). With ``fail_at``,
    that call raises instead (a kill)."""
    calls: list[str] = []

    def counted(cfg):
        calls.append(Path(cfg.paths.output_dir).relative_to(out).as_posix())
        if len(calls) == fail_at:
            raise Killed
        METRICS[(out.name, calls[-1])] = real_train(cfg)
        return METRICS[(out.name, calls[-1])]

    monkeypatch.setattr(runner, "train", counted)
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("pipeline", overrides=overrides)
        try:
            runner.run_study(cfg, out)
        except Killed:
            assert fail_at is not None
    return calls


def rows(out: Path) -> list[dict[str, str]]:
    """results.csv without the seconds column (the time a run took differs between starts)."""
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def counted_lines(caplog) -> list[str]:
    """The study's per-run log lines (``[k/n] …``) caught since the last clear."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ptft.study.runner" and r.getMessage().startswith("[")
    ]


def test_a_study_started_again_runs_only_what_had_not_finished(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ptft.study.runner")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    scratch = "finetune/digits/fraction_0.1/scratch/seed_0"
    probe = "finetune/digits/fraction_0.1/linear_probe/seed_0"
    assert run_study(whole, STUDY, monkeypatch) == ["pretrain", scratch, probe]

    # killed when the linear probe started: pretraining and the scratch run had finished
    assert run_study(broken, STUDY, monkeypatch, fail_at=3) == ["pretrain", scratch, probe]
    assert not (broken / "results.csv").exists()
    assert json.loads((broken / scratch / runner.RESULT_FILE).read_text())["method"] == "scratch"
    assert not (broken / probe / runner.RESULT_FILE).exists()

    # started again: only the linear probe runs, from the pretraining checkpoint of the first start
    caplog.clear()
    assert run_study(broken, STUDY, monkeypatch) == [probe]
    # the run kept from the first start counts: 1 of 2, then 2 of 2
    first, second = counted_lines(caplog)
    assert first.startswith("[1/2] digits fraction 0.1   scratch ") and "earlier start" in first
    assert second.startswith("[2/2] digits fraction 0.1   linear_probe ")
    assert "earlier start" not in second and second.endswith("all runs done")
    assert (broken / f"{probe}.interrupted-1" / "config.yaml").is_file()  # the killed attempt
    assert rows(broken) == rows(whole) and len(rows(whole)) == 2
    # every metric of the probe (its training loss too) is the uninterrupted study's, bit for bit
    assert METRICS[("broken", probe)] == METRICS[("whole", probe)]
    assert METRICS[("broken", scratch)] == METRICS[("whole", scratch)]
    assert (broken / "results.md").read_text() == (whole / "results.md").read_text()

    # a third start finds everything done and writes the same report
    assert run_study(broken, STUDY, monkeypatch) == []
    assert rows(broken) == rows(whole)

    # another study in the same folder is refused in one line naming what differs
    with pytest.raises(ConfigError) as err:
        run_study(broken, [*STUDY, "tasks.digits.seeds=2"], monkeypatch)
    message = str(err.value)
    assert "\n" not in message and f"hydra.run.dir={broken} holds another study" in message
    assert "tasks.digits.seeds: 1 there, 2 here" in message


def test_the_command_line_refuses_another_study_before_hydra_writes(tmp_path, monkeypatch):
    # a study.json as a first start leaves it, for a study of 1 seed
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        runner.start_study(compose("pipeline", overrides=STUDY), tmp_path / "run", STUDY)
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    # what ptft-pipeline checks before Hydra starts (ptft.cli.validated prints it, exit status 2)
    check = "ptft.study.runner.check"
    error = run_config_error(
        "pipeline", [*STUDY, "tasks.digits.seeds=2", "hydra.run.dir=run"], check
    )
    assert error.startswith("hydra.run.dir=run holds another study (tasks.digits.seeds: 1 there")
    assert "\n" not in error and "its own overrides ('tasks.digits.label_fractions=[0.1]' " in error
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [runner.STUDY_FILE]
    # the same study passes the check
    assert run_config_error("pipeline", [*STUDY, "hydra.run.dir=run"], check) is None


#: the vision study's two arms, four runs: scratch, the linear probe from each arm, and
#: finetune from simclr only
ARMS_STUDY = [
    "tasks.digits.label_fractions=[0.1]",
    "tasks.digits.seeds=1",
    "tasks.digits.methods=[scratch,linear_probe,finetune]",
    "pretrain.arms.autoencoder.methods=[linear_probe]",
]


def test_a_study_with_arms_started_again_matches_runs_by_arm(tmp_path, monkeypatch):
    """Restarts of a two-arm study, with ``train`` replaced by a stand-in that writes a
    checkpoint for a pretraining and returns made-up metrics for a fine-tuning run, recording
    which checkpoint each run started from."""
    out = tmp_path / "run"
    calls: list[str] = []
    started_from: dict[str, str | None] = {}

    def stand_in(cfg):
        stage = Path(cfg.paths.output_dir)
        name = stage.relative_to(out).as_posix()
        calls.append(name)
        if len(calls) == fail_at:
            raise Killed
        if name.startswith("pretrain/"):
            (stage / "checkpoints").mkdir(parents=True)
            (stage / "checkpoints" / "last.ckpt").write_text(name)
            return {}
        started_from[name] = cfg.model.pretrained
        return {"test/acc": 0.5, "test/f1": 0.4, "val/acc": 0.6, "val/f1": 0.5}

    def start(fail: int | None = None) -> list[str]:
        nonlocal fail_at
        fail_at = fail
        calls.clear()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("pipeline", overrides=ARMS_STUDY)
            try:
                runner.run_study(cfg, out)
            except Killed:
                assert fail is not None
        return list(calls)

    fail_at: int | None = None
    monkeypatch.setattr(runner, "train", stand_in)
    config.register()
    runs = "finetune/digits/fraction_0.1"
    scratch, probe, ae_probe, tuned = (
        f"{runs}/scratch/seed_0",
        f"{runs}/simclr-linear_probe/seed_0",
        f"{runs}/autoencoder-linear_probe/seed_0",
        f"{runs}/simclr-finetune/seed_0",
    )
    # killed at the last run: each arm pretrained once, into its own directory, first
    assert start(fail=6) == [
        "pretrain/simclr",
        "pretrain/autoencoder",
        scratch,
        probe,
        ae_probe,
        tuned,
    ]
    # the autoencoder's pretraining is gone, but none of the runs left needs it: not run again
    shutil.rmtree(out / "pretrain" / "autoencoder")
    assert start() == [tuned]
    simclr = str(out / "pretrain" / "simclr" / "checkpoints" / "last.ckpt")
    autoencoder = str(out / "pretrain" / "autoencoder" / "checkpoints" / "last.ckpt")
    assert started_from == {
        scratch: None,
        probe: simclr,
        ae_probe: autoencoder,
        tuned: simclr,
    }
    assert [(r["pretrain"], r["method"]) for r in rows(out)] == [
        ("", "scratch"),
        ("simclr", "linear_probe"),
        ("autoencoder", "linear_probe"),
        ("simclr", "finetune"),
    ]
    # a recorded result is matched by its arm too: one that says another arm runs again (and
    # its arm, whose pretraining is gone, pretrains again)
    record = json.loads((out / ae_probe / runner.RESULT_FILE).read_text())
    assert record["arm"] == "autoencoder"
    (out / ae_probe / runner.RESULT_FILE).write_text(json.dumps({**record, "arm": "simclr"}))
    assert start() == ["pretrain/autoencoder", ae_probe]


# --------------------------------------------------------------------- sweeps
def test_a_sweep_started_again_skips_the_jobs_that_finished(tmp_path):
    # job 0 finished in an earlier launch into this sweep directory (its record, as run_job
    # writes it); job 1 was killed (no record)
    # (Hydra writes a job's overrides as it parsed them: values that are not booleans, which
    # it would spell False, keep this record's text the same as Hydra's)
    overrides = ["experiment=digits_classifier", "debug=fdr", "logger=none", *QUIET[:2]]
    earlier = sweep.JobStatus(
        job=0,
        status="ok",
        overrides=[*overrides, "model.optimizer.lr=0.001"],
        optimized_metric="val/acc",
        monitor_mode="max",
        value=0.375,
        metrics={"val/acc": 0.375, "test/acc": 0.25},
        duration_s=12.5,
    )
    earlier.write(tmp_path / "sweep" / "0")
    (tmp_path / "sweep" / "1").mkdir()
    (tmp_path / "sweep" / "1" / "train.log").write_text("killed\n")

    result = run_cli(
        ["ptft.train", "-m", *overrides, "model.optimizer.lr=1e-3,2e-3", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "sweep"
    again = json.loads((sweep_dir / "0" / sweep.STATUS_FILE).read_text())
    assert again == {**json.loads(json.dumps(asdict(earlier))), "reused": True}
    log = (sweep_dir / "0" / "train.log").read_text()
    assert "not run again" in log and "final metrics:" not in log  # job 0 did not train
    rerun = json.loads((sweep_dir / "1" / sweep.STATUS_FILE).read_text())
    assert rerun["status"] == "ok" and rerun["reused"] is False
    assert "model.optimizer.lr=0.002" in rerun["overrides"] and rerun["value"] != 0.375
    assert "final metrics:" in (sweep_dir / "1" / "train.log").read_text()

    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        summary = {r["job"]: r for r in csv.DictReader(f)}
    assert {j: (r["status"], r["reused"]) for j, r in summary.items()} == {
        "0": ("ok", "True"),
        "1": ("ok", "False"),
    }
    assert float(summary["0"]["val/acc"]) == 0.375 and summary["0"]["test/acc"] == "0.25"
    markdown = (sweep_dir / "sweep_summary.md").read_text()
    assert "2 jobs: 2 ok (1 ok from an earlier launch, not run again)" in markdown


# ------------------------------------------------------------- label fractions
#: the training examples a class of data=pydoc_package (10 classes) has
PYDOC_PACKAGE_COUNTS = [652, 628, 304, 300, 292, 209, 168, 130, 96, 79]


def test_a_label_fraction_keeps_every_class_and_the_documented_total():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), PYDOC_PACKAGE_COUNTS))
    # scikit-learn's stratified draw alone leaves the rarest class out
    plain = stratified_split(labels, round(0.005 * len(labels)), 0)[0]
    assert np.bincount(labels[plain], minlength=10).tolist() == [3, 3, 2, 1, 1, 1, 1, 1, 1, 0]
    for fraction in (0.0035, 0.005, 0.01, 0.05, 0.999):
        for seed in (0, 1):
            keep = label_subset(labels, fraction, seed)
            kept = np.bincount(labels[keep], minlength=10)
            assert len(keep) == round(fraction * len(labels)) == kept.sum()
            assert kept.min() >= 1 and (kept <= PYDOC_PACKAGE_COUNTS).all()
            assert len(np.unique(keep)) == len(keep) and (np.diff(keep) > 0).all()
            np.testing.assert_array_equal(keep, label_subset(labels, fraction, seed))
    # the rarest class took the place of one example of the class kept most above its share
    # (class 2: 2 kept, 1.49 its share); where every class was drawn, the draw is unchanged
    fixed = np.bincount(labels[label_subset(labels, 0.005, 0)], minlength=10)
    assert fixed.tolist() == [3, 3, 1, 1, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(
        label_subset(labels, 0.05, 3), stratified_split(labels, round(0.05 * len(labels)), 3)[0]
    )
    # a class with a single example, which scikit-learn's split refuses, is kept too
    odd = np.array([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    assert sorted(set(odd[label_subset(odd, 0.4, 0)])) == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"keeps 9 of 2858 .* fewer than the 10 classes"):
        label_subset(labels, 0.003, 0)


# ----------------------------------------------------------------- debug=fdr
def test_debug_fdr_writes_only_what_the_docs_say(tmp_path):
    result = run_cli(["ptft.train", "debug=fdr", *QUIET], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    (run,) = (tmp_path / "outputs" / "debug" / "runs").iterdir()
    ts = run.name
    assert written == [
        f"outputs/debug/runs/{ts}/.hydra/config.yaml",
        f"outputs/debug/runs/{ts}/.hydra/hydra.yaml",
        f"outputs/debug/runs/{ts}/.hydra/overrides.yaml",
        f"outputs/debug/runs/{ts}/train.log",
    ]
    docs = (Path(__file__).parents[2] / "docs" / "configs.md").read_text()
    assert "`debug=fdr` writes only its run directory, `outputs/debug/runs/<ts>/`" in docs
    assert (
        "writes only .hydra/ and train.log" in (Path(__file__).parents[2] / "README.md").read_text()
    )
