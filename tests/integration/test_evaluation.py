"""The evaluation story: ``ptft-eval``'s report for classifiers (equal to ``ptft-train``'s test
stage and to scikit-learn on the saved predictions), the online kNN and probe of a pretraining
run, the embedding projector, and the error for a checkpoint without a test split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.neighbors import KNeighborsClassifier
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptft.evaluation.report import evaluate
from ptft.runs.build import build_datamodule
from ptft.runs.fit import train
from ptft.runs.load import load_run
from tests.helpers import QUIET, compose_train, run_cli

EVAL_QUIET = QUIET[2:]  # ptft-eval has no callbacks group


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A classifier trained for 30 steps (about 97% test accuracy: a few mistakes to count)."""
    out = tmp_path_factory.mktemp("classifier")
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "trainer.max_steps=30",
            "trainer.val_check_interval=15",
            "model.augment=null",
            "model.optimizer.lr=1e-2",
            "logger=none",
            *QUIET,
        ],
        out,
    )
    return out, train(cfg)


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """Two epochs of SimCLR with both monitors (uniform kNN votes) and TensorBoard."""
    out = tmp_path_factory.mktemp("simclr_monitored")
    cfg = compose_train(
        [
            "experiment=digits_simclr",
            "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=1",
            "model.knn.k=5",
            "model.knn.temperature=null",
            "model.online_probe.enabled=true",
            "logger=tensorboard",
            "test=false",
            *QUIET,
        ],
        out,
    )
    return out, train(cfg)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    target = np.array([int(r["target"]) for r in rows])
    predicted = np.array([int(r["predicted"]) for r in rows])
    probabilities = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    return target, predicted, probabilities


def test_eval_report_equals_the_train_test_stage_and_scikit_learn(classifier_run, tmp_path):
    run_dir, train_metrics = classifier_run
    best = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))  # what ptft-train tested
    cfg = compose_train(
        [f"ckpt_path={best}", "logger=tensorboard", *EVAL_QUIET], tmp_path, config_name="eval"
    )
    returned = evaluate(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == returned
    # the same scalars, the same values as ptft-train's test stage
    train_test = {k: v for k, v in train_metrics.items() if k.startswith("test/")}
    assert set(train_test) == {"test/loss", "test/acc", "test/f1"}
    for name, value in train_test.items():
        assert written["metrics"][name] == pytest.approx(value, abs=1e-6), name

    # and scikit-learn agrees on the saved predictions
    target, predicted, probabilities = read_predictions(tmp_path / "predictions.csv")
    assert len(target) == 360 and 0.8 < accuracy_score(target, predicted) < 1.0  # some mistakes
    np.testing.assert_array_equal(probabilities.argmax(1), predicted)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert written["metrics"]["test/acc"] == pytest.approx(
        accuracy_score(target, predicted), abs=1e-6
    )
    labels = list(range(10))
    for average, key in (
        ("macro", "test/precision"),
        ("macro", "test/recall"),
        ("macro", "test/f1"),
    ):
        p, r, f, _ = precision_recall_fscore_support(
            target, predicted, labels=labels, average=average, zero_division=0
        )
        expected = {"test/precision": p, "test/recall": r, "test/f1": f}[key]
        assert written["metrics"][key] == pytest.approx(expected, abs=1e-6), key
    p, r, f, support = precision_recall_fscore_support(
        target, predicted, labels=labels, zero_division=0
    )
    assert written["labels"] == [str(i) for i in labels]  # digits have no class names: indices
    for i in labels:
        assert written["per_class"][str(i)] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": support[i]}, abs=1e-6
        )
    assert (
        written["confusion_matrix"] == confusion_matrix(target, predicted, labels=labels).tolist()
    )

    # the confusion matrix as a picture, and as a TensorBoard figure
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]


def test_eval_without_a_test_split_is_a_one_line_error(classifier_run, tmp_path):
    run_dir, _ = classifier_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["ptft_run"]["data"]["test_fraction"] = 0.0  # a run made with data.test_fraction=0
    torch.save(checkpoint, tmp_path / "no_test.ckpt")
    result = run_cli(
        ["ptft.eval", "ckpt_path=no_test.ckpt", "hydra.run.dir=eval", *EVAL_QUIET], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: ckpt_path=no_test.ckpt: its data (DigitsDataModule, data.test_fraction=0.0) "
        "has no test split; pass data=… with a test split, e.g. data=digits data.test_fraction=0.2"
    )
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_pretraining_monitors_representation_quality(simclr_run):
    run_dir, metrics = simclr_run
    assert 0.3 < metrics["val/knn_acc"] <= 1.0  # well above chance (0.1), even after 2 epochs
    assert 0.0 <= metrics["val/probe_acc"] <= 1.0 and np.isfinite(metrics["train/probe_loss"])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    # the probe's own group: its rate, no weight decay, its weight and bias only
    (probe,) = [g for g in groups if g.get("name") == "online_probe"]
    assert (
        probe["initial_lr"] == 1e-2 and probe["weight_decay"] == 0.0 and len(probe["params"]) == 2
    )
    module, _ = load_run(run_dir / "checkpoints" / "last.ckpt")
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))  # each once
    assert "lr-AdamW/online_probe" in metrics


def test_projector_gets_the_validation_embeddings(simclr_run):
    run_dir, _ = simclr_run
    board = run_dir / "tensorboard"
    assert "val/embedding" in (board / "projector_config.pbtxt").read_text()
    (embedding,) = [p for p in board.glob("*/*") if (p / "tensors.tsv").is_file()]
    features = np.loadtxt(embedding / "tensors.tsv", delimiter="\t")
    metadata = (embedding / "metadata.tsv").read_text().split()
    assert features.shape == (144, 128) and len(metadata) == 144  # every validation digit (< 1000)
    assert set(metadata) == {str(i) for i in range(10)}
    assert (embedding / "sprite.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_of_a_pretraining_checkpoint_has_its_knn_accuracy(simclr_run, tmp_path):
    run_dir, _ = simclr_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_train([f"ckpt_path={ckpt}", *EVAL_QUIET], tmp_path, config_name="eval")
    evaluate(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(written) == {"test/loss", "test/knn_acc", "test/probe_acc"}
    # scikit-learn's kNN (k=5, uniform votes, cosine) on the same backbone features
    module, record = load_run(ckpt)
    data = build_datamodule(record["data"], supervised=False)
    data.setup("test")
    module.eval()
    with torch.no_grad():

        def embed(loader):
            pairs = [(module.backbone(x), y) for x, y in loader]
            return torch.cat([f for f, _ in pairs]).numpy(), torch.cat(
                [y for _, y in pairs]
            ).numpy()

        bank, bank_labels = embed(data.labelled_train_dataloader())
        queries, truth = embed(data.test_dataloader())
    knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(bank, bank_labels)
    assert written["test/knn_acc"] == pytest.approx(knn.score(queries, truth), abs=1e-6)
