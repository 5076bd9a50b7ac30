"""Your own labelled text (ptft.data.labelled_text, ptft.data.tables): files the tests write in
every format and as local Hugging Face data sets, the splits, the label mapping, the framing
with ptft's and with BERT's special tokens, truncation, the template, and each bad input as
one ConfigError line."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ptft.config.resolvers import register
from ptft.data.labelled_text import TextClassificationDataModule, TextPairsDataModule
from ptft.data.tokenizer import EOS_ID, IGNORE_INDEX, SEP_ID, load_tokenizer
from ptft.errors import ConfigError
from tests.helpers import save_tokenizer

WORDS = {
    "pos": "good great lovely fine happy".split(),
    "neg": "bad awful poor sad angry".split(),
    "neu": "table chair plain window door".split(),
}


def rows(n_per_class: dict, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for label, n in n_per_class.items():
        for _ in range(n):
            out.append({"text": " ".join(rng.choice(WORDS[label], 5)), "label": label})
    rng.shuffle(out)
    return out


def write(path: Path, records: list[dict]) -> Path:
    frame = pd.DataFrame(records)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def classification(tmp_path: Path, **kwargs) -> TextClassificationDataModule:
    kwargs.setdefault("max_length", 32)
    return TextClassificationDataModule(
        cache_dir=str(tmp_path / "cache"),
        input_shape=[kwargs["max_length"]],
        vocab_size=300,
        **kwargs,
    )


def pairs(tmp_path: Path, **kwargs) -> TextPairsDataModule:
    kwargs.setdefault("max_length", 32)
    return TextPairsDataModule(
        cache_dir=str(tmp_path / "cache"),
        input_shape=[kwargs["max_length"]],
        vocab_size=300,
        **kwargs,
    )


def labels_of(dm, split: str) -> list[str]:
    return [dm.label_names[y] for y in dm.datasets[split].labels]


def error(fn) -> str:
    with pytest.raises(ConfigError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_splits_stratified_and_seeded(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", rows({"pos": 40, "neg": 30, "neu": 30}))
    dm = classification(tmp_path, files=str(path), val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    assert dm.label_names == ["neg", "neu", "pos"] and dm.num_classes == 3
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes == {"train": 70, "val": 10, "test": 20}
    # stratified: each split keeps the 4:3:3 proportions
    assert Counter(labels_of(dm, "test")) == {"pos": 8, "neg": 6, "neu": 6}
    assert Counter(labels_of(dm, "val")) == {"pos": 4, "neg": 3, "neu": 3}
    # seeded: the same split again; another seed, another split
    again = classification(tmp_path, files=str(path), val_fraction=0.1, test_fraction=0.2)
    again.setup()
    assert again.datasets["test"].ids == dm.datasets["test"].ids
    other = classification(
        tmp_path, files=str(path), val_fraction=0.1, test_fraction=0.2, split_seed=1
    )
    other.setup()
    assert other.datasets["test"].ids != dm.datasets["test"].ids
    assert dm.manifest["train_counts"] == {"neg": 21, "neu": 21, "pos": 28}


def test_int_labels_keep_numeric_order_and_per_split_files(tmp_path):
    recs = [{"text": f"t {i}", "label": [10, 2, 1][i % 3]} for i in range(30)]
    train = write(tmp_path / "train.csv", recs)
    val = write(tmp_path / "val.jsonl", recs[:6])
    test = write(tmp_path / "test.parquet", recs[6:9])
    dm = classification(
        tmp_path, train_files=str(train), val_files=str(val), test_files=[str(test)]
    )
    dm.setup()
    assert dm.label_names == ["1", "2", "10"]  # ints in numeric order, not "10" < "2"
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 30, "val": 6, "test": 3}
    index = {1: 0, 2: 1, 10: 2}
    assert dm.datasets["val"].labels == [index[r["label"]] for r in recs[:6]]


def test_label_fraction_is_stratified_with_every_class(tmp_path):
    path = write(tmp_path / "d.csv", rows({"pos": 40, "neg": 30, "neu": 6}))
    dm = classification(tmp_path, files=str(path), label_fraction=0.1)
    dm.setup()
    counts = Counter(labels_of(dm, "train"))
    assert sum(counts.values()) == 6 and set(counts) == {"pos", "neg", "neu"}
    assert len(dm.datasets["val"]) == 8  # val and test are never cut


def test_hf_save_to_disk_and_json_builder(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = rows({"pos": 20, "neg": 20})
    d = datasets.Dataset.from_dict({k: [r[k] for r in recs] for k in ("text", "label")})
    datasets.DatasetDict({"train": d, "validation": d.select(range(6))}).save_to_disk(
        str(tmp_path / "saved")
    )
    dm = classification(tmp_path, path=str(tmp_path / "saved"), test_fraction=0.25)
    dm.setup()
    # validation given; test carved out of train
    assert {s: len(x) for s, x in dm.datasets.items()} == {"train": 30, "val": 6, "test": 10}
    assert Counter(labels_of(dm, "test")) == {"pos": 5, "neg": 5}
    write(tmp_path / "a.jsonl", recs)
    dm = classification(
        tmp_path,
        path="json",
        data_files={"train": str(tmp_path / "a.jsonl")},
        split_map={"train": "train"},
    )
    dm.setup()
    assert dm.label_names == ["neg", "pos"] and len(dm.datasets["train"]) == 32


# ------------------------------------------------------------------------------ framing
def test_framing_ptft_pair_and_truncation_count(tmp_path, caplog):
    recs = [
        {"a": "good day", "b": "great day" + " great day" * (19 if i < 3 else 0), "label": i % 2}
        for i in range(20)
    ]
    path = write(tmp_path / "p.jsonl", recs)
    dm = classification(tmp_path, files=str(path), text_column=["a", "b"], max_length=16)
    with caplog.at_level(logging.INFO, logger="ptft.data.labelled_text"):
        dm.setup()
    tokenizer = load_tokenizer(dm.tokenizer_path)
    a = tokenizer.encode("good day").ids
    b = tokenizer.encode("great day").ids
    short = [ids for ids in dm.datasets["train"].ids if len(ids) < 16]
    assert [EOS_ID, *a, SEP_ID, *b, EOS_ID] in short + [
        ids for s in ("val", "test") for ids in dm.datasets[s].ids
    ]
    assert sum(dm.truncated.values()) == 3
    assert all(len(ids) <= 16 for s in dm.datasets.values() for ids in s.ids)
    (line,) = [r.getMessage() for r in caplog.records if "examples" in r.getMessage()]
    assert "3 truncated to data.max_length=16" in line and "2 classes" in line
    assert "tokens per example mean" in line and "p95" in line and "max 16" in line


def test_framing_with_bert_roles(tmp_path):
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [" ".join(w) for w in WORDS.values()] * 5
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=250, special_tokens=specials)
    )
    directory = tmp_path / "bert"
    save_tokenizer(tokenizer, directory)
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer"})
    )
    recs = [{"a": "good", "b": "sad", "label": i % 2} for i in range(20)]
    path = write(tmp_path / "p.jsonl", recs)
    dm = classification(tmp_path, files=str(path), text_column=["a", "b"], tokenizer=str(directory))
    dm.setup()
    good, sad = tokenizer.token_to_id("good"), tokenizer.token_to_id("sad")
    assert dm.datasets["train"].ids[0] == [101, good, 102, sad, 102]  # [CLS] a [SEP] b [SEP]
    assert dm.datasets["train"].pad_id == 0


def test_text_pairs_template_and_batches(tmp_path):
    recs = [{"q": f"what is {i}", "a": f"answer {i}"} for i in range(30)]
    path = write(tmp_path / "qa.csv", recs)
    dm = pairs(
        tmp_path, files=str(path), source_column="q", target_column="a", template="Q: {source} A:"
    )
    dm.setup()
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 24, "val": 3, "test": 3}
    tokenizer = load_tokenizer(dm.tokenizer_path)
    tokens, start = dm.datasets["train"].pairs[0]
    prompt = tokenizer.decode(tokens[1 : start - 1])
    assert prompt.startswith("Q: what is ") and prompt.endswith(" A:")
    assert tokens[start - 1] == SEP_ID and tokens[-1] == EOS_ID
    x, y = next(iter(dm.train_dataloader()))
    assert (y[0, : start - 1] == IGNORE_INDEX).all() and y[0, start - 1] == tokens[start]


def test_text_pairs_cut_the_source_never_the_target(tmp_path):
    recs = [{"source": "word " * (40 if i == 0 else 2), "target": "yes"} for i in range(20)]
    dm = pairs(tmp_path, files=str(write(tmp_path / "s.jsonl", recs)), max_length=12)
    dm.setup()
    assert sum(dm.truncated.values()) == 1
    assert all(len(t) <= 12 for d in dm.datasets.values() for t, _ in d.pairs)


# ------------------------------------------------------------------------- num_classes
def test_num_classes_resolves_from_the_files(tmp_path):
    register()
    path = write(tmp_path / "d.csv", rows({"pos": 5, "neg": 5, "neu": 5}))
    cfg = OmegaConf.create(
        {
            "data": {
                "_target_": "ptft.data.labelled_text.TextClassificationDataModule",
                "files": str(path),
                "label_column": "label",
                "cache_dir": str(tmp_path),
                "num_classes": "${ptft.num_classes:}",
            },
            "model": {"num_classes": "${data.num_classes}"},
        }
    )
    assert cfg.model.num_classes == 3
    dm = classification(tmp_path, files=str(path), num_classes=2)
    assert "data.num_classes=2, but the training rows have 3 classes" in error(dm.setup)


# ------------------------------------------------------------------------------ errors
def test_missing_file_and_empty_glob(tmp_path):
    message = error(classification(tmp_path, files=str(tmp_path / "nope.csv")).setup)
    assert message.startswith("data.files: no file matches") and "nope.csv" in message
    message = error(classification(tmp_path, train_files=str(tmp_path / "*.jsonl")).setup)
    assert message.startswith("data.train_files: no file matches")


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    assert error(classification(tmp_path, files=str(tmp_path / "e.csv")).setup) == (
        f"{tmp_path / 'e.csv'} is empty; add rows or leave it out"
    )
    (tmp_path / "h.csv").write_text("text,label\n")
    assert "is empty (no rows)" in error(
        classification(tmp_path, files=str(tmp_path / "h.csv")).setup
    )


def test_missing_column_lists_the_columns(tmp_path):
    path = write(tmp_path / "d.csv", rows({"pos": 5, "neg": 5}))
    message = error(classification(tmp_path, files=str(path), label_column="sentiment").setup)
    assert message == (
        f"data.label_column=sentiment: {path} has no column 'sentiment'; "
        "its columns are text, label"
    )
    message = error(pairs(tmp_path, files=str(path), source_column="question").setup)
    assert message.startswith("data.source_column=question:") and "text, label" in message


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,pos\ncaf\xe9,neg\n".encode("latin-1"))
    message = error(classification(tmp_path, files=str(path)).setup)
    assert message.startswith(f"{path}:3: not UTF-8")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", label: 2}\n')
    assert error(classification(tmp_path, files=str(path)).setup).startswith(f"{path}:3: not JSON")


def test_label_unseen_in_train(tmp_path):
    train = write(tmp_path / "train.csv", rows({"pos": 5, "neg": 5}))
    val = write(tmp_path / "val.csv", rows({"pos": 2, "neu": 3}))
    dm = classification(tmp_path, train_files=str(train), val_files=str(val), test_files=str(train))
    message = error(dm.setup)
    assert message.startswith(
        "data.label_column=label: the val split has label 'neu' (3 rows) that the training "
        "split never has (classes: neg, pos)"
    )


def test_class_too_small_for_the_split(tmp_path):
    path = write(tmp_path / "d.csv", rows({"pos": 20, "neg": 20, "neu": 2}))
    message = error(classification(tmp_path, files=str(path)).setup)
    assert message.startswith(
        "data.label_column=label: class 'neu' has 2 example(s), fewer than the 3 a stratified "
        "train/val/test split needs"
    )


def test_template_without_source_and_two_sources(tmp_path):
    message = error(lambda: pairs(tmp_path, files="x.csv", template="Question:"))
    assert message.startswith("data.template='Question:' has no {source}")
    message = error(classification(tmp_path, files="a.csv", path="json").setup)
    assert message.startswith("give the rows one way") and "['files', 'path']" in message


def test_a_missing_local_dataset_folder_never_asks_the_hub(tmp_path):
    message = error(classification(tmp_path, path="./no/such/folder").setup)
    assert message == "data.path=./no/such/folder: no such folder; fix the path"
