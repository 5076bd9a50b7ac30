"""Byte-level BPE tokenizer: fixed special ids, lossless round trip, vocab size, save/load."""

from __future__ import annotations

import pytest

from ptft.data import pydoc_corpus as pc
from ptft.data import tokenizer as T
from ptft.errors import ConfigError
from tests.helpers import save_tokenizer

SAMPLES = [
    "Return the absolute version of a path.",
    "    indented code:\n\n\tx = {'a': 1}  # tabs, braces\r\n",
    "Unicode: naïve café, ∑ x², 日本語, emoji 🐍.",
    "A literal <eos> or <mask> inside a docstring is just text.",
    "",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real docstrings from a few standard-library files (read with ast, ~100 kB)."""
    root = pc.stdlib_root()
    records = []
    for rel in ("argparse.py", "os.py", "posixpath.py", "inspect.py", "typing.py"):
        records += pc.extract_docstrings((root / rel).read_bytes(), rel)
    return [r.text for r in records]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return T.train_tokenizer(texts, vocab_size=1000)


def test_special_tokens_have_ids_0_to_6_in_order(tokenizer):
    expected = ["<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<sep>", "<cls>"]
    assert [tokenizer.token_to_id(t) for t in expected] == list(range(7))
    assert [tokenizer.id_to_token(i) for i in range(7)] == expected
    T.check_special_ids(tokenizer)  # the fixed layout: no error
    assert (T.PAD_ID, T.EOS_ID, T.MASK_ID, T.CLS_ID, T.NUM_SPECIAL) == (0, 3, 4, 6, 7)


def test_encode_decode_round_trips_ordinary_text(tokenizer, texts):
    for text in [*SAMPLES, *texts[:50]]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
        # plain text never produces special tokens, not even from a literal "<eos>"
        assert all(i >= T.NUM_SPECIAL for i in ids)
    # merges were learned: common words take fewer tokens than bytes
    assert len(tokenizer.encode(SAMPLES[0]).ids) < len(SAMPLES[0].encode()) / 2


def test_vocab_size_is_respected(texts, tokenizer):
    assert tokenizer.get_vocab_size() == 1000  # 100 kB of text has far more than 1000 merges
    small = T.train_tokenizer(texts, vocab_size=300)
    assert small.get_vocab_size() == 300
    assert max(small.encode(" ".join(texts[:20])).ids) < 300
    with pytest.raises(ConfigError, match="vocab_size>=263"):
        T.train_tokenizer(texts, vocab_size=262)


def test_training_is_deterministic(texts, tokenizer):
    again = T.train_tokenizer(texts, vocab_size=1000)
    assert again.to_str() == tokenizer.to_str()
    assert T.tokenizer_hash(again) == T.tokenizer_hash(tokenizer)


def test_save_and_load_give_identical_encodings(tokenizer, texts, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for loaded in (T.load_tokenizer(path), T.load_tokenizer(tmp_path / "tok")):
        for text in [*SAMPLES, *texts[:50]]:
            assert loaded.encode(text).ids == tokenizer.encode(text).ids
        assert T.tokenizer_hash(loaded) == T.tokenizer_hash(tokenizer)
    with pytest.raises(ConfigError, match="does not exist"):
        T.load_tokenizer(tmp_path / "missing.json")


def test_a_tokenizer_with_other_special_ids_is_refused(texts, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>"], show_progress=False
    )
    other.train_from_iterator(texts, trainer=trainer)
    other.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="<pad> id 1, not 0"):
        T.load_tokenizer(tmp_path)
