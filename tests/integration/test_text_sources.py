"""User text sources for LM pretraining: text files and Hugging Face data sets.

Splits are checked against an independent computation of the seeded hash, token files
against the tokenizer's own encoding, and every error against its one-line message.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models

from ptft.data.text_files import TextFilesDataModule
from ptft.data.tokenizer import (
    EOS_ID,
    MIN_VOCAB_SIZE,
    load_tokenizer,
    train_tokenizer,
)
from ptft.errors import ConfigError
from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train, save_tokenizer

SPLITS = ("train", "val", "test")
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa"
).split()
#: tiny data settings: a byte-level vocabulary and short blocks keep every test to a few seconds
TINY = {"vocab_size": MIN_VOCAB_SIZE, "block_size": 8, "batch_size": 4, "eval_batch_size": 4}


def expected_split(key: str, seed: int, val: float, test: float) -> str:
    """The split rule, written out again: u = first 8 bytes of sha256("seed:key") / 2**64."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def note(i: int) -> str:
    """A distinct text per index (no text is a substring of another)."""
    return (
        f"Note {i:03d}: {WORDS[i % len(WORDS)]} meets {WORDS[(i * 7) % len(WORDS)]} "
        f"at {i * 13} o'clock."
    )


def write_notes(root: Path, count: int) -> dict[str, str]:
    """``count`` files under ``root`` (half in a subfolder); relative path → text."""
    texts = {}
    for i in range(count):
        rel = f"{'sub/' if i % 2 else ''}n{i:03d}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(note(i) + "\n")
        texts[rel] = note(i)
    return texts


def token_stream(dm, split: str) -> list[int]:
    return np.asarray(dm.token_files[split].open()).tolist()


def decoded_docs(dm, split: str) -> list[str]:
    """The documents of a split's token file, decoded with the datamodule's tokenizer."""
    tokenizer = load_tokenizer(dm.tokenizer_path)
    docs, current = [], []
    for token in token_stream(dm, split):
        if token == EOS_ID:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    assert not current  # every document ends with <eos>
    return docs


def files_dm(files: str, cache: Path, **kwargs) -> TextFilesDataModule:
    settings = {**TINY, "val_fraction": 0.2, "test_fraction": 0.2, **kwargs}
    return TextFilesDataModule(files, str(cache), input_shape=[settings["block_size"]], **settings)


# -- text files -------------------------------------------------------------------------


def test_text_files_split_by_file_disjoint_stable_and_served_as_blocks(tmp_path):
    texts = write_notes(tmp_path / "notes", 30)
    expected = {
        s: [texts[r] for r in sorted(texts) if expected_split(r, 0, 0.2, 0.2) == s] for s in SPLITS
    }
    assert all(
        expected.values()
    )  # the seed gives every split a file: the check below is not vacuous

    dm = files_dm(f"{tmp_path}/notes/**/*.txt", tmp_path / "cache")
    dm.setup("fit")
    assert dm.manifest["split_by"] == "file" and dm.manifest["num_files"] == 30
    for split, wanted in expected.items():
        assert sorted(decoded_docs(dm, split)) == sorted(
            wanted
        )  # exactly its files, none of the others

    # stable: the same files moved elsewhere, built into a fresh cache, split and tokenize alike
    moved = tmp_path / "elsewhere" / "notes"
    moved.parent.mkdir()
    (tmp_path / "notes").rename(moved)
    again = files_dm(f"{moved}/**/*.txt", tmp_path / "cache2")
    again.prepare_data()
    for split in expected:
        assert token_stream(again, split) == token_stream(dm, split)
        assert (
            again.manifest["splits"][split]["texts_hash"]
            == dm.manifest["splits"][split]["texts_hash"]
        )

    # batches are (B, block_size + 1) windows of the training stream, each starting a block apart
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 9) and batch.dtype == torch.long
    stream, blocks = token_stream(dm, "train"), dm.train_dataloader().dataset
    assert len(blocks) == (len(stream) - 9) // 8 + 1
    assert blocks[2].tolist() == stream[16:25]


def test_relative_glob_starts_at_the_current_directory(tmp_path, monkeypatch):
    texts = write_notes(tmp_path / "notes", 30)
    monkeypatch.chdir(tmp_path)
    dm = files_dm("notes/*.txt", tmp_path / "cache")  # top level only: not sub/
    dm.setup()
    top = {r for r in texts if "/" not in r}
    got = [d for s in SPLITS for d in decoded_docs(dm, s)]
    assert sorted(got) == sorted(texts[r] for r in top)
    # the split key is the path below the glob's root, as for the recursive glob above
    assert sorted(decoded_docs(dm, "val")) == sorted(
        texts[r] for r in top if expected_split(r, 0, 0.2, 0.2) == "val"
    )


def test_few_files_fall_back_to_splitting_paragraphs(tmp_path, caplog):
    paragraphs = {f"f{k}.txt": [note(10 * k + i) for i in range(12)] for k in range(2)}
    for name, paras in paragraphs.items():
        (tmp_path / name).write_text("\n\n  \n".join(paras) + "\n")  # a blank line may hold spaces
    dm = files_dm(
        f"{tmp_path}/*.txt",
        tmp_path / "cache",
        split_paragraphs=True,
        val_fraction=0.3,
        test_fraction=0.3,
    )
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.manifest["split_by"] == "document" and "split their 24 documents" in caplog.text
    for split in SPLITS:
        wanted = [
            p
            for name, paras in paragraphs.items()
            for i, p in enumerate(paras)
            if expected_split(f"{name}:{i}", 0, 0.3, 0.3) == split
        ]
        assert wanted and decoded_docs(dm, split) == wanted


def test_a_given_tokenizer_is_used_as_is(tmp_path):
    texts = write_notes(tmp_path / "notes", 30)
    other = train_tokenizer([note(i) * 3 for i in range(100, 200)], MIN_VOCAB_SIZE + 40)
    given = save_tokenizer(other, tmp_path / "pretrained")
    dm = files_dm(
        f"{tmp_path}/notes/**/*.txt",
        tmp_path / "cache",
        vocab_size=MIN_VOCAB_SIZE + 40,
        tokenizer=str(given),
    )
    dm.setup()
    assert Path(dm.tokenizer_path).read_bytes() == given.read_bytes()
    assert sorted(p.name for p in given.parent.iterdir()) == [
        "tokenizer.json"
    ]  # nothing written beside it
    reference = Tokenizer.from_file(str(given))
    for split in SPLITS:
        expected = []
        for rel in sorted(texts):
            if expected_split(rel, 0, 0.2, 0.2) == split:
                expected += reference.encode(texts[rel], add_special_tokens=False).ids + [EOS_ID]
        assert token_stream(dm, split) == expected
    # a directory holding tokenizer.json works too
    by_dir = files_dm(
        f"{tmp_path}/notes/**/*.txt",
        tmp_path / "cache",
        vocab_size=MIN_VOCAB_SIZE + 40,
        tokenizer=str(given.parent),
    )
    by_dir.setup()
    assert token_stream(by_dir, "train") == token_stream(dm, "train")


def test_a_given_tokenizer_is_checked(tmp_path):
    write_notes(tmp_path / "notes", 30)
    files = f"{tmp_path}/notes/**/*.txt"
    # checked before the data is read: this glob matches nothing, yet the tokenizer is named
    with pytest.raises(
        ConfigError,
        match=r"^data.tokenizer=.*nope.json: no such file; pass the path of a tokenizer.json",
    ):
        files_dm(
            f"{tmp_path}/none/*.txt", tmp_path / "cache", tokenizer=str(tmp_path / "nope.json")
        ).setup()

    big = train_tokenizer([note(i) * 3 for i in range(200)], MIN_VOCAB_SIZE + 40)
    assert big.get_vocab_size() > MIN_VOCAB_SIZE
    path = save_tokenizer(big, tmp_path / "big")
    with pytest.raises(
        ConfigError,
        match=(
            rf"more than data.vocab_size={MIN_VOCAB_SIZE}; "
            rf"raise data.vocab_size to at least {big.get_vocab_size()}"
        ),
    ):
        files_dm(files, tmp_path / "cache", tokenizer=str(path)).setup()

    foreign = Tokenizer(models.WordLevel({"hello": 0, "<pad>": 1}, unk_token="<pad>"))
    path = save_tokenizer(foreign, tmp_path / "foreign")
    with pytest.raises(ConfigError, match=r"data.tokenizer=.* gives <pad> id 1, not 0"):
        files_dm(files, tmp_path / "cache", tokenizer=str(path)).setup()

    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a tokenizers JSON file"):
        files_dm(files, tmp_path / "cache", tokenizer=str(tmp_path / "junk.json")).setup()


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            lambda d: None,
            r"data.files=.*\*\*/\*.txt: no file matches; check the path \(relative globs start at",
        ),
        (
            lambda d: [(d / f"e{i}.txt").write_text(" \n\n") for i in range(3)],
            r"all 3 matching files are empty",
        ),
        (
            lambda d: [
                (d / "ok.txt").write_text("fine"),
                (d / "latin.txt").write_bytes("caf\xe9".encode("latin-1")),
            ],
            r"data.files: .*latin.txt is not UTF-8 text .*; convert it to UTF-8",
        ),
        (
            lambda d: (d / "one.txt").write_text("only one document"),
            r"1 documents leave the .* split empty; add files, set data.split_paragraphs=true",
        ),
    ],
    ids=["no-match", "all-empty", "not-utf8", "too-few"],
)
def test_text_files_errors_are_one_line(setup, message, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    setup(folder)
    with pytest.raises(ConfigError, match=message) as error:
        files_dm(f"{folder}/**/*.txt", tmp_path / "cache").setup()
    assert "\n" not in str(error.value)


def test_a_folder_instead_of_a_glob_says_what_to_write(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(
        ConfigError, match=r"no file matches; use '.*/in/\*\*/\*.txt' for the files in that folder"
    ):
        files_dm(str(tmp_path / "in"), tmp_path / "cache").setup()


@pytest.mark.parametrize("model", ["causal_lm", "masked_lm"])
def test_lm_pretrains_on_text_files_through_hydra(model, tmp_path):
    write_notes(tmp_path / "notes", 30)
    cfg = compose_train(
        [
            f"model={model}",
            "data=text_files",
            f"data.files={tmp_path}/notes/**/*.txt",
            f"data.cache_dir={tmp_path}/cache",
            f"data.vocab_size={MIN_VOCAB_SIZE}",
            "data.block_size=16",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            "model.backbone.dim=32",
            "model.backbone.num_layers=1",
            "model.backbone.num_heads=2",
            "debug=fdr",
            "logger=none",
            *QUIET,
        ],
        tmp_path / "out",
    )
    assert cfg.model.backbone.vocab_size == MIN_VOCAB_SIZE and list(cfg.data.input_shape) == [16]
    metrics = train(cfg)
    # one step from GPT-2 init: near-uniform predictions over the vocabulary
    assert metrics["train/loss"] == pytest.approx(math.log(MIN_VOCAB_SIZE), abs=0.3)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["test/loss"])


# -- Hugging Face datasets ---------------------------------------------------------------


def hf_dm(cache: Path, **kwargs):
    from ptft.data.hf_text import HFTextDataModule

    settings = {**TINY, "val_fraction": 0.2, "test_fraction": 0.2, **kwargs}
    return HFTextDataModule(cache_dir=str(cache), input_shape=[settings["block_size"]], **settings)


def test_hf_text_builder_carves_val_and_test_out_of_train(tmp_path):
    pytest.importorskip("datasets")
    lines = [note(i) if i % 5 else "" for i in range(60)]  # every fifth line is blank
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    dm = hf_dm(tmp_path / "cache", path="text", data_files=str(tmp_path / "corpus.txt"))
    dm.setup()
    for split in SPLITS:
        wanted = [
            t for i, t in enumerate(lines) if t and expected_split(str(i), 0, 0.2, 0.2) == split
        ]
        assert wanted and decoded_docs(dm, split) == wanted
    assert dm.manifest["source_splits"]["val"] == "train (carved)"
    assert (tmp_path / "cache" / "hf").is_dir()  # the data set cache stays under data.cache_dir


def test_hf_json_builder_uses_the_source_splits(tmp_path):
    pytest.importorskip("datasets")
    files = {}
    for k, split in enumerate(["train", "validation", "test"]):
        rows = [{"body": note(100 * k + i), "n": i} for i in range(12)] + [{"body": "   ", "n": -1}]
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = hf_dm(tmp_path / "cache", path="json", data_files=files, text_column="body")
    dm.setup()
    for k, split in enumerate(SPLITS):
        assert decoded_docs(dm, split) == [
            note(100 * k + i) for i in range(12)
        ]  # blank body dropped

    with pytest.raises(
        ConfigError,
        match=(
            r"data.text_column=text: the train split of json has no such column; "
            r"set data.text_column to one of body, n"
        ),
    ):
        hf_dm(tmp_path / "cache", path="json", data_files=files).setup()
    with pytest.raises(ConfigError, match=r"data.text_column=n holds int64, not text"):
        hf_dm(tmp_path / "cache", path="json", data_files=files, text_column="n").setup()
    with pytest.raises(
        ConfigError,
        match=(
            r"data.splits.train=training: json has no such split; "
            r"set it to one of train, validation, test"
        ),
    ):
        hf_dm(
            tmp_path / "cache",
            path="json",
            data_files=files,
            text_column="body",
            splits={"train": "training"},
        ).setup()
    with pytest.raises(ConfigError, match=r"data.path=json: could not load \(FileNotFoundError"):
        hf_dm(tmp_path / "cache", path="json", data_files=str(tmp_path / "missing.jsonl")).setup()


def test_hf_text_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(
        ConfigError, match=r"^data=hf_text needs Hugging Face datasets: pip install 'ptft\[hf\]'$"
    ):
        hf_dm(tmp_path / "cache", path="text", data_files="x.txt").setup()


def test_hf_text_imports_datasets_only_when_loading():
    import ptft.data.hf_text as module

    # a module-level import would make every run (and --help) pay for, or need, datasets
    tree = ast.parse(Path(module.__file__).read_text())
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    top_level |= {
        node.module.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "ptft" in top_level and "datasets" not in top_level
