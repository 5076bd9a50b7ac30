"""Rebuild a run from a ptft checkpoint and test it on its test split.

Every checkpoint gets ``metrics.json`` with the test scalars the module logs (the same
names and values as ``ptft-train``'s test stage: ``test/loss``, ``test/acc``, ``test/f1``,
``test/ppl``, ``test/knn_acc`` …). A classifier's evaluation adds, computed with torchmetrics
from the predictions it saves (``predictions.csv``): macro precision and recall, per-class
precision, recall, F1 and support (keyed by class name when the checkpoint has them), and
the confusion matrix (in ``metrics.json``, as ``confusion_matrix.png``, and as a TensorBoard
figure with ``logger=tensorboard``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from ptft.callbacks.predictions import TestPredictions
from ptft.data import protocol
from ptft.errors import ConfigError
from ptft.evaluation.metrics import class_names, classification_report, confusion_matrix_figure
from ptft.handoff import with_tokenizer
from ptft.runs.build import build_datamodule, build_loggers, plain
from ptft.runs.fit import metrics_of
from ptft.runs.load import load_run
from ptft.tasks.classifier import Classifier

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"


def require_test_split(
    datamodule: L.LightningDataModule, data_cfg: Mapping[str, Any], ckpt_path: str
) -> None:
    """Stop with a clear error when the data has no test example (e.g. ``data.test_fraction=0``)."""
    datamodule.setup("test")
    try:
        size = len(datamodule.test_dataloader().dataset)
    except TypeError:  # an iterable data set: its size is unknown until it is read
        return
    if size == 0:
        name = str(data_cfg.get("_target_", type(datamodule).__name__)).rpartition(".")[2]
        setting = (
            f", data.test_fraction={data_cfg['test_fraction']}"
            if "test_fraction" in data_cfg
            else ""
        )
        raise ConfigError(
            f"ckpt_path={ckpt_path}: its data ({name}{setting}) has no test split; "
            "pass data=… with a test split, e.g. data=digits data.test_fraction=0.2"
        )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and write the report into ``cfg.paths.output_dir``; returns the
    scalars."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    own_model = plain(cfg.model) if cfg.get("model") else None
    module, record = load_run(
        cfg.ckpt_path, own_model, plain(cfg.data) if cfg.get("data") else None
    )
    out_dir = Path(cfg.paths.output_dir)
    tokenizer = record.get("tokenizer")
    data_cfg = plain(cfg.data) if cfg.get("data") else record["data"]
    if not data_cfg:  # a model directory (Hugging Face, an export) brings no data of its own
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} names no data to test on; pass data=… "
            "(e.g. data=pydoc_text)"
        )
    if tokenizer is not None:  # the run directory the record names may have moved
        specials = getattr(module.backbone, "special_tokens", None)
        data_cfg = with_tokenizer(
            data_cfg, tokenizer, out_dir, f"ckpt_path={cfg.ckpt_path}", specials
        )
    datamodule = build_datamodule(data_cfg, supervised=type(module).supervised)
    require_test_split(datamodule, data_cfg, cfg.ckpt_path)
    predictions = TestPredictions() if isinstance(module, Classifier) else None
    trainer = instantiate(
        cfg.trainer,
        logger=build_loggers(cfg) or False,
        callbacks=[predictions] if predictions else [],
    )
    if trainer.world_size > 1:  # the saved predictions would be one process's share
        raise ConfigError("ptft-eval tests on one device; pass trainer.devices=1")
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in metrics_of(trainer).items() if k.startswith("test/")}
    result: dict[str, Any] = {"checkpoint": str(cfg.ckpt_path), "metrics": metrics}
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        names = record.get("labels") or protocol.label_names(datamodule)
        report = classification_report(
            predictions.target, predictions.predicted, module.hparams["num_classes"], names
        )
        # the module's own scalars (those ptft-train logs) first; the report adds the rest
        metrics = {**report.pop("metrics"), **metrics}
        result = {**result, "metrics": metrics, **report}
        write_predictions(out_dir / PREDICTIONS_FILE, predictions, report["labels"])
        figure = confusion_matrix_figure(report["confusion_matrix"], report["labels"])
        figure.savefig(out_dir / CONFUSION_FILE, dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "test/confusion_matrix", figure, global_step=trainer.global_step, close=False
                )
                logger.experiment.flush()
    (out_dir / METRICS_FILE).write_text(dumps(result))
    log.info(
        "test metrics: %s (written to %s)",
        ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())),
        out_dir / METRICS_FILE,
    )
    return metrics


def dumps(result: Mapping[str, Any]) -> str:
    """Indented JSON, with each list of numbers on one line (a confusion-matrix row reads as
    one)."""
    text = json.dumps(result, indent=2)
    numbers = re.compile(r"\[([-+\d.eE,\s]+)\]")
    return (
        numbers.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
        + "\n"
    )


def write_predictions(path: Path, predictions: TestPredictions, names: Sequence[str]) -> None:
    """One row per test example, in test order: its index, target, predicted class and the
    probability of each class (columns ``p_<class name>``)."""
    names = class_names(predictions.logits.shape[1], names)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "target", "predicted", *(f"p_{n}" for n in names)])
        rows = zip(
            predictions.target.tolist(),
            predictions.predicted.tolist(),
            predictions.probabilities.tolist(),
            strict=True,
        )
        for i, (target, predicted, probs) in enumerate(rows):
            writer.writerow([i, target, predicted, *(f"{p:.6g}" for p in probs)])
