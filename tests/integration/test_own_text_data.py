"""Your own labelled text end to end: data=text_classification and data=text_pairs train from
scratch (CSV, JSONL) and from a pretrained GPT, its backbone and tokenizer (Parquet, a local
Hugging Face data set), ptft-eval reports per-class
metrics by class name, the columns are plain config keys, and a bad file found in setup is one
ConfigError line that leaves no run claiming success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ptft.cli import config_error_line
from ptft.errors import ConfigError
from ptft.evaluation.report import evaluate
from ptft.runs.fit import train
from ptft.sweeps.job import STATUS_FILE
from tests.helpers import QUIET, TINY_TEXT_MODEL, compose_train

pytestmark = pytest.mark.slow

WORDS = {
    "positive": "good great lovely fine happy",
    "negative": "bad awful poor sad angry",
    "neutral": "table chair plain window door",
}
SHORT = [
    "trainer.max_epochs=null",
    "trainer.max_steps=4",
    "trainer.check_val_every_n_epoch=null",
    "trainer.val_check_interval=4",
    "logger=none",
    *QUIET,
]
TINY = [
    "model.backbone.dim=32",
    "model.backbone.num_layers=1",
    "model.backbone.num_heads=2",
    "model.backbone.max_positions=32",
    "data.max_length=32",
    "data.batch_size=8",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own_data")
    lines = ["review,sentiment"]
    for i in range(60):
        label = list(WORDS)[i % 3]
        words = WORDS[label].split()
        lines.append(f'"{words[i % 5]} {words[(i + 2) % 5]} day, {i}",{label}')
    (root / "reviews.csv").write_text("\n".join(lines) + "\n")
    qa = [{"question": f"{i} plus one", "answer": str(i + 1)} for i in range(40)]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    (root / "val.csv").write_text("review,sentiment\ngood day,positive\nodd day,surprised\n")
    # the same rows as Parquet, and the pairs as a local Hugging Face data set (save_to_disk)
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    pd.read_csv(root / "reviews.csv").to_parquet(root / "reviews.parquet")
    datasets.Dataset.from_list(qa).save_to_disk(str(root / "qa_dataset"))
    return {
        "csv": root / "reviews.csv",
        "parquet": root / "reviews.parquet",
        "jsonl": root / "qa.jsonl",
        "dataset": root / "qa_dataset",
        "bad_val": root / "val.csv",
    }


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    """``last.ckpt`` of a 2-step tiny GPT on the docstrings (as test_generation's text_ckpts)."""
    out = tmp_path_factory.mktemp("pydoc_gpt")
    cache = tmp_path_factory.mktemp("pydoc_cache")
    overrides = [
        "experiment=pydoc_gpt",
        f"data.cache_dir={cache}",
        *TINY_TEXT_MODEL,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "test=false",
        "logger=none",
        *QUIET,
    ]
    train(compose_train(overrides, out))
    return out / "checkpoints" / "last.ckpt"


def begin(start: str, gpt: Path) -> list[str]:
    """From scratch: a small tokenizer trained on the rows; pretrained: the GPT's (512 tokens)."""
    return [f"model.pretrained={gpt}"] if start == "pretrained" else ["data.vocab_size=300"]


def classification(files: dict[str, Path], cache: Path, source: str = "csv") -> list[str]:
    return [
        "model=sequence_classifier",
        "data=text_classification",
        f"data.files={files[source]}",
        "data.text_column=review",
        "data.label_column=sentiment",
        f"data.cache_dir={cache}",
    ]


def generation(files: dict[str, Path], cache: Path, source: str = "jsonl") -> list[str]:
    rows = f"data.path={files['dataset']}" if source == "dataset" else f"data.files={files[source]}"
    return [
        "model=sequence_generator",
        "data=text_pairs",
        rows,
        "data.source_column=question",
        "data.target_column=answer",
        "data.template='Q: {source} A:'",
        "model.max_new_tokens=4",
        f"data.cache_dir={cache}",
    ]


@pytest.mark.parametrize("start, source", [("scratch", "csv"), ("pretrained", "parquet")])
def test_classifier_trains_and_eval_names_the_classes(files, gpt, tmp_path, start, source):
    out = tmp_path / "run"
    rows = classification(files, tmp_path / "cache", source)
    cfg = compose_train([*rows, *TINY, *begin(start, gpt), *SHORT], out)
    assert cfg.model.num_classes == 3  # counted from the file when the config resolves
    assert "${ptft.num_classes:}" in OmegaConf.to_yaml(cfg.data)  # as --cfg job shows it
    metrics = train(cfg)
    assert {"val/acc", "test/acc", "test/f1"} <= set(metrics)
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["ptft_labels"] == ["negative", "neutral", "positive"]
    manifest = json.loads((out / "data_manifest.json").read_text())
    assert manifest["train_counts"] == {"negative": 16, "neutral": 16, "positive": 16}
    if start == "pretrained":  # encoded with the checkpoint's tokenizer (vocabulary 512)
        assert checkpoint["ptft_tokenizer"] == torch.load(gpt, weights_only=True)["ptft_tokenizer"]
        return
    report_dir = tmp_path / "eval"
    eval_cfg = compose_train(
        [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", *QUIET[2:]],
        report_dir,
        config_name="eval",
    )
    evaluate(eval_cfg)
    written = json.loads((report_dir / "metrics.json").read_text())
    assert written["labels"] == ["negative", "neutral", "positive"]
    assert set(written["per_class"]) == {"negative", "neutral", "positive"}
    assert sum(c["support"] for c in written["per_class"].values()) == 6
    header = (report_dir / "predictions.csv").read_text().splitlines()[0]
    assert "p_negative" in header


@pytest.mark.parametrize("start, source", [("scratch", "jsonl"), ("pretrained", "dataset")])
def test_generator_trains_on_pairs(files, gpt, tmp_path, start, source):
    out = tmp_path / "run"
    rows = generation(files, tmp_path / "cache", source)
    cfg = compose_train([*rows, *TINY, *begin(start, gpt), *SHORT], out)
    metrics = train(cfg)
    assert {"val/ppl", "val/token_acc", "test/loss"} <= set(metrics)
    manifest = json.loads((out / "data_manifest.json").read_text())
    assert manifest["template"] == "Q: {source} A:"
    assert {s: v["examples"] for s, v in manifest["splits"].items()} == {
        "train": 32,
        "val": 4,
        "test": 4,
    }


def test_the_columns_are_config_keys_and_a_bad_file_leaves_no_success(files, tmp_path):
    # what ptft-train --cfg job prints: the data node, its columns plain keys
    shown = OmegaConf.to_yaml(compose_train(classification(files, tmp_path), tmp_path).data)
    assert "text_column: review" in shown and "label_column: sentiment" in shown
    # a label in val that train never has: found in setup, once the run's directory exists (as
    # Hydra makes it before ptft-train's run starts); ptft-train prints it as one line, exit 2
    run_dir = tmp_path / "outputs" / "run"
    run_dir.mkdir(parents=True)
    overrides = [
        *classification(files, tmp_path / "cache"),
        f"data.train_files={files['csv']}",
        f"data.val_files={files['bad_val']}",
        "data.files=null",
        "data.test_fraction=0.2",
        *TINY,
        "data.vocab_size=300",
        *SHORT,
    ]
    with pytest.raises(ConfigError) as info:
        train(compose_train(overrides, run_dir))
    line = config_error_line(info.value)
    assert "the val split has label 'surprised' (1 rows) that the training split never has" in line
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / STATUS_FILE).exists()
