"""ptft-pipeline end to end on a tiny budget: the report files and their numbers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.svm import SVC

from ptft.data.digits import DigitsDataModule

from .conftest import run_cli


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pipeline")
    result = run_cli(
        [
            "ptft.pipeline",
            "label_fractions=[0.02,0.1]",
            "seeds=1",
            "small_fraction=0.05",
            "small_fraction_seeds=2",
            'pretrain.overrides=["experiment=digits_simclr","trainer.max_epochs=1","trainer.check_val_every_n_epoch=1",'
            '"callbacks.rich_progress_bar=null","callbacks.rich_model_summary=null","trainer.enable_progress_bar=false"]',
            'finetune.overrides=["experiment=digits_classifier","trainer.max_steps=6","trainer.val_check_interval=3"]',
            "hydra.run.dir=run",
        ],
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return cwd / "run"


def test_results_csv_has_one_row_per_fraction_method_and_seed(pipeline_run):
    rows = list(csv.DictReader(open(pipeline_run / "results.csv")))
    assert {"label_fraction", "method", "seed", "test_acc"} <= set(rows[0])
    keys = sorted((float(r["label_fraction"]), r["method"], int(r["seed"])) for r in rows)
    methods = ["finetune", "linear_probe", "scratch", "svc"]
    expected = sorted([(0.02, m, s) for m in methods for s in (0, 1)] + [(0.1, m, 0) for m in methods])
    assert keys == expected
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)


def test_svc_baseline_uses_the_same_labelled_subsets(pipeline_run):
    rows = [r for r in csv.DictReader(open(pipeline_run / "results.csv")) if r["method"] == "svc"]
    for r in rows:
        dm = DigitsDataModule(label_fraction=float(r["label_fraction"]), subset_seed=int(r["seed"]))
        dm.setup("fit")
        (x, y), (xt, yt) = dm.splits["train"], dm.splits["test"]
        svc = SVC(C=10.0, gamma="scale")  # the pipeline's default baseline
        predicted = svc.fit(x.flatten(1), y).predict(xt.flatten(1))
        assert float(r["test_acc"]) == pytest.approx(np.mean(predicted == yt.numpy()), abs=1e-9)
        assert float(r["test_f1"]) == pytest.approx(f1_score(yt, predicted, average="macro"), abs=1e-9)


def test_markdown_table_plot_and_tensorboard(pipeline_run):
    rows = list(csv.DictReader(open(pipeline_run / "results.csv")))
    table = (pipeline_run / "results.md").read_text()
    assert "| label fraction | scratch | linear_probe | finetune | svc |" in table
    accs = [float(r["test_acc"]) for r in rows if r["method"] == "scratch" and r["label_fraction"] == "0.02"]
    assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} (n=2)" in table
    assert (pipeline_run / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (pipeline_run / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    events = list(pipeline_run.rglob("events.out.tfevents.*"))
    # the pretraining, every fine-tuning run, and the summary all log under the one run directory
    assert len({e.parent for e in events}) >= 1 + 9 + 1
    # fine-tuning runs inside the study write no checkpoints
    assert not list((pipeline_run / "finetune").rglob("*.ckpt"))
