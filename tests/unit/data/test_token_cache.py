"""Token cache: dtype, exact flat layout with <eos> separators, packed blocks, reuse, workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ptft.data import token_cache as tc
from ptft.data import tokenizer as T
from ptft.errors import ConfigError
from tests.helpers import save_tokenizer

TEXTS = [
    "Return the absolute version of a path.",
    "Split a pathname into a pair (head, tail).",
    "",  # an empty document still ends with <eos>
    "Join two or more pathname components, inserting '/' as needed.\n\n    Indented example.",
    "Test whether a path exists.  Returns False for broken symbolic links.",
    "Return the base name of pathname path. ∑ 日本語 <eos> stays text.",
] * 7


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    tokenizer = T.train_tokenizer(TEXTS, vocab_size=300)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def expected(tokenizer_path) -> np.ndarray:
    """The flat token stream, computed text by text: ids, then <eos>, for each document."""
    tokenizer = T.load_tokenizer(tokenizer_path)
    ids: list[int] = []
    for text in TEXTS:
        ids += tokenizer.encode(text).ids + [tokenizer.token_to_id("<eos>")]
    return np.array(ids, dtype=np.int64)


def test_dtype_follows_the_vocabulary_size():
    assert tc.token_dtype(300) == np.uint16
    assert tc.token_dtype(65_536) == np.uint16  # ids 0..65535 fit
    assert tc.token_dtype(65_537) == np.uint32


def test_flat_file_is_the_concatenation_of_the_encodings_with_eos(tokenizer_path, expected):
    token_file = tc.build_token_file(
        tokenizer_path, TEXTS, "train", batch_size=4
    )  # several batches
    assert token_file.dtype == "uint16"
    assert (token_file.num_tokens, token_file.num_docs) == (len(expected), len(TEXTS))
    raw = np.fromfile(token_file.path, dtype="<u2")
    np.testing.assert_array_equal(raw.astype(np.int64), expected)
    assert (raw == T.EOS_ID).sum() == len(TEXTS)  # the literal "<eos>" in a text is not one
    assert token_file.path.startswith(str(tokenizer_path.parent))  # cached next to the tokenizer
    np.testing.assert_array_equal(np.asarray(token_file.open()), raw)


def test_causal_blocks_are_contiguous_slices_with_one_extra_token(tokenizer_path, expected):
    token_file = tc.build_token_file(tokenizer_path, TEXTS, "train")
    blocks = tc.PackedBlocks(token_file, block_size=16)
    assert len(blocks) == (len(expected) - 17) // 16 + 1
    for i in range(len(blocks)):
        item = blocks[i]
        assert item.dtype == torch.int64 and item.shape == (17,)
        np.testing.assert_array_equal(item.numpy(), expected[16 * i : 16 * i + 17])
    # the extra token of block i is the first of block i + 1: targets continue the stream
    assert blocks[0][-1] == blocks[1][0]
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_masked_lm_blocks_tile_the_stream(tokenizer_path, expected):
    token_file = tc.build_token_file(tokenizer_path, TEXTS, "train")
    blocks = tc.PackedBlocks(token_file, block_size=16, with_next=False)
    assert len(blocks) == len(expected) // 16
    joined = torch.cat([blocks[i] for i in range(len(blocks))]).numpy()
    np.testing.assert_array_equal(joined, expected[: 16 * len(blocks)])
    with pytest.raises(ConfigError, match="lower block_size"):
        tc.PackedBlocks(token_file, block_size=len(expected))


def test_second_build_reuses_the_file_and_other_texts_get_another(tokenizer_path, monkeypatch):
    first = tc.build_token_file(tokenizer_path, TEXTS, "val")
    mtime = tc.Path(first.path).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again instead of reusing the cache")

    monkeypatch.setattr(tc, "encode_documents", fail)
    again = tc.build_token_file(tokenizer_path.parent, TEXTS, "val")  # the directory works too
    assert again == first
    assert tc.Path(first.path).stat().st_mtime_ns == mtime
    monkeypatch.undo()

    other = tc.build_token_file(tokenizer_path, TEXTS[:-1], "val")
    assert other.path != first.path and other.num_docs == len(TEXTS) - 1


def test_blocks_are_read_in_worker_processes_without_pickling_the_tokens(tokenizer_path, expected):
    token_file = tc.build_token_file(tokenizer_path, TEXTS, "train")
    blocks = tc.PackedBlocks(token_file, block_size=8)
    blocks[0]  # opens the map in this process; it must not travel to the worker
    assert len(pickle.dumps(blocks)) < 2_000
    loader = DataLoader(blocks, batch_size=4, num_workers=1)
    batches = torch.cat(list(loader))
    assert batches.shape == (len(blocks), 9)
    np.testing.assert_array_equal(batches[:, :8].reshape(-1).numpy(), expected[: 8 * len(blocks)])
