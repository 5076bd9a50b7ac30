"""Trackers (``logger=mlflow``, ``logger=wandb``, a list of loggers as ``logger=many`` makes):
a short run logs to each, offline, and each holds the resolved config and the final metrics
that ``train()`` returns."""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train

#: a classifier that validates once and tests: a few seconds on 2 cores
SHORT = [
    "experiment=digits_classifier",
    "trainer.max_steps=6",
    "trainer.val_check_interval=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.embedding_projector=null",
    *QUIET,
]

#: the block size of W&B's run file (LevelDB's log format)
BLOCK = 32768


def test_mlflow_tensorboard_and_csv_each_get_the_config_and_the_final_metrics(tmp_path):
    """One run with a list of loggers (what logger=many composes, plus MLflow's store in the
    run directory): each holds the resolved config and the final metrics."""
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    cfg = compose_train(
        [*SHORT, "logger=[tensorboard,csv,mlflow]", "model.optimizer.lr=0.002"], tmp_path
    )
    metrics = train(cfg)
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("digits_classifier")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == tmp_path.name and run.info.status == "FINISHED"
    assert run.data.params["model/optimizer/lr"] == "0.002"
    assert run.data.params["task_name"] == "digits_classifier"
    assert run.data.metrics["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert run.data.tags["task_name"] == "digits_classifier"
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert events.Scalars("val/acc")[-1].value == pytest.approx(metrics["val/acc"], abs=1e-6)
    # the HParams tab: the resolved config against the final metrics
    hparams_tab = events.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(hparams_tab["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["model/optimizer/lr"].number_value == pytest.approx(
        cfg.model.optimizer.lr
    )
    experiment = HParamsPluginData.FromString(hparams_tab["_hparams_/experiment"])
    assert {"val/acc", "test/acc"} <= {m.name.tag for m in experiment.experiment.metric_infos}
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last = {k: v for k, v in rows[-1].items() if v}  # the final metrics, in one row
    assert float(last["test/acc"]) == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert float(last["val/acc"]) == pytest.approx(metrics["val/acc"], abs=1e-6)
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr


def test_wandb_writes_an_offline_run_with_the_config_and_the_final_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test (the logger sets it)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train([*SHORT, "logger=wandb"], tmp_path)
    metrics = train(cfg)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    run, config, summary = {}, {}, {}
    for record in finished_wandb_run(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"name": record.run.display_name, "tags": list(record.run.tags)}
        for update in getattr(record, kind).update if kind in ("config", "summary") else ():
            key = update.key or "/".join(update.nested_key)  # "val/acc" comes as val, acc
            {"config": config, "summary": summary}[kind][key] = json.loads(update.value_json)
    assert run == {"name": tmp_path.name, "tags": ["digits_classifier"]}
    assert config["task_name"] == "digits_classifier"
    assert config["model"]["optimizer"]["lr"] == cfg.model.optimizer.lr
    assert summary["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert summary["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


def finished_wandb_run(path: Path, timeout: float = 30) -> list[Any]:
    """The records of a finished run: W&B's service process may write the file's last block
    a moment after ``finish()`` returns, so wait for the run's ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.2)


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of W&B's offline run file (``run-<id>.wandb``; ``wandb sync`` uploads it): a
    ``:W&B`` header, then LevelDB's log format (32 KiB blocks of records, each with a 7-byte
    header: checksum, length, type: full, first, middle or last piece of a protobuf record)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, record = 7, b""
    while pos + 7 <= len(data):
        space = BLOCK - pos % BLOCK
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if space < 7 or kind == 0:  # the block's padding
            pos += space
            continue
        if pos + 7 + length > len(data):  # a record still being written
            return
        piece = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        record = piece if kind in (1, 2) else record + piece
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_without_its_extra_fails_in_one_line_before_the_run(
    tracker, tmp_path, monkeypatch
):
    from ptft.errors import ConfigError

    monkeypatch.setitem(sys.modules, tracker, None)  # as if it were not installed
    cfg = compose_train([*SHORT, f"logger=[tensorboard,{tracker}]"], tmp_path)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert f"logger.{tracker}" in message and f"pip install 'ptft[{tracker}]'" in message
    assert "\n" not in message and not list(tmp_path.iterdir())
