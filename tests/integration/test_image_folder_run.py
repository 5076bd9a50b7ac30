"""data=image_folder end to end: SimCLR pretrains on an unlabelled folder, the classifier trains
on a folder per class from scratch and on a Hugging Face image data set from that checkpoint
(the number of classes counted in both), and ``ptft-eval`` reports per-class metrics by class
name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptft.evaluation.report import evaluate
from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train
from tests.unit.data.test_image_folder import CLASSES, class_tree, hf_images, write_image

#: tiny and quick: 8x8 RGB images, a two-stage CNN of 8 and 16 channels
TINY = [
    "data.image_size=8",
    "data.channels=3",
    "data.num_workers=0",
    "data.batch_size=8",
    "model.backbone.channels=[8,16]",
    "logger=none",
    *QUIET,
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    labelled = class_tree(root / "labelled")
    for i in range(24):  # unlabelled: flat and nested, any colour
        colour = list(CLASSES.values())[i % 3]
        write_image(root / "unlabelled" / ("batch2" if i % 2 else "") / f"{i}.png", colour, i)
    return labelled, root / "unlabelled"


@pytest.fixture(scope="module")
def simclr_run(folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simclr")
    cfg = compose_train(
        [
            "experiment=digits_simclr",
            "data=image_folder",
            f"data.root={folders[1]}",
            "data.unlabelled=true",
            "data.batch_size=8",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            *TINY,
        ],
        out,
    )
    metrics = train(cfg)
    assert "val/loss" in metrics and "test/loss" in metrics and "val/knn_acc" not in metrics
    return out


def classifier(source: str, out: Path, *overrides: str, steps: int = 18) -> dict[str, float]:
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "data=image_folder",
            source,
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps // 2}",
            "model.augment=null",
            "model.optimizer.lr=1e-2",
            *TINY,
            *overrides,
        ],
        out,
    )
    assert cfg.model.num_classes == 3  # counted from the class folders or the label column
    return train(cfg)


def test_classifier_from_scratch_then_ptft_eval_by_class_name(folders, tmp_path):
    metrics = classifier(f"data.root={folders[0]}", tmp_path / "run")
    assert metrics["test/acc"] >= 2 / 3  # colour tells the class: easy after a few steps
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["ptft_labels"] == ["cat", "dog", "owl"]
    cfg = compose_train([f"ckpt_path={ckpt}", *QUIET[2:]], tmp_path / "eval", config_name="eval")
    evaluate(cfg)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["labels"] == ["cat", "dog", "owl"]
    assert set(report["per_class"]) == {"cat", "dog", "owl"}
    assert sum(v["support"] for v in report["per_class"].values()) == 8  # the test split
    assert "p_cat" in (tmp_path / "eval" / "predictions.csv").read_text().splitlines()[0]


def test_classifier_on_a_hf_data_set_from_the_unlabelled_simclr_checkpoint(simclr_run, tmp_path):
    pytest.importorskip("datasets")
    path = hf_images(tmp_path)
    metrics = classifier(f"data.path={path}", tmp_path / "run", f"model.pretrained={simclr_run}")
    assert metrics["test/acc"] >= 2 / 3
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["ptft_labels"] == ["cat", "dog", "owl"]
