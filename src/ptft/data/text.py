"""Packed token blocks for language-model pretraining, from any source of split texts.

``TokenBlocksDataModule`` holds what every text source shares: the tokenizer (trained on
the training split, or given as ``tokenizer.json``), the token files and the loaders. A
source subclass only says what its train/val/test documents are (``load_splits``); the
standard-library docstrings (``PydocTextDataModule``, here), the user's text files
(``ptft.data.text_files``) and Hugging Face data sets (``ptft.data.hf_text``) all serve the
same batches.

The tokenizer and the token files are built once and cached under ``cache_dir``: a trained
tokenizer lives in a directory keyed by the training texts' hash, the vocabulary size and
the split seed, so later runs (and other ranks) reuse it. Every batch is
``(B, block_size + 1)`` token ids: a causal LM reads ``x = item[:-1]``, ``y = item[1:]``; a
masked LM reads ``item[:-1]`` (one data layout serves both objectives).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from tokenizers import Tokenizer

from ptft.config.bounds import (
    ExistingPath,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Range,
    Seed,
    check_arguments,
)
from ptft.data.loaders import SplitLoaders
from ptft.data.pydoc_corpus import SPLITS, PydocCorpus, build_corpus, texts_hash
from ptft.data.token_cache import PackedBlocks, TokenFile, build_token_file
from ptft.data.tokenizer import (
    MIN_VOCAB_SIZE,
    TOKENIZER_FILE,
    load_tokenizer,
    tokenizer_specials,
    train_tokenizer,
    write_tokenizer_config,
)
from ptft.errors import ConfigError
from ptft.files import locked, write_atomic

#: ``data.tokenizer``: a file to read, so it must exist
TokenizerPath = Annotated[
    str,
    ExistingPath(
        "no such file; pass the path of a tokenizer.json (or its folder), "
        "or data.tokenizer=null to train one"
    ),
]
#: a share of the documents held out for validation or test
HeldOut = Annotated[float, Range(ge=0, lt=1)]


def _trained_dir(cache_dir: Path, train_hash: str, vocab_size: int, seed: int) -> Path:
    return cache_dir / f"tokenizer-{train_hash[:16]}-v{vocab_size}-s{seed}"


def trained_tokenizer(
    cache_dir: Path, train_texts: Sequence[str], vocab_size: int, seed: int
) -> Path:
    """Path of a ``tokenizer.json`` trained on ``train_texts``, trained and saved if missing."""
    directory = _trained_dir(cache_dir, texts_hash(train_texts), vocab_size, seed)
    path = directory / TOKENIZER_FILE
    if path.is_file():
        return path
    # of two processes that need it at once, one trains; the other waits and reads its file
    # (the token files are keyed by the tokenizer's hash: both must encode with the same one)
    with locked(directory):
        if not path.is_file():
            tokenizer = train_tokenizer(train_texts, vocab_size)
            # as Tokenizer.save writes it
            write_atomic(path, tokenizer.to_str(pretty=True).encode())
    return path


def cached_tokenizer(cache_dir: Path, corpus: PydocCorpus, vocab_size: int, seed: int) -> Path:
    """Path of ``tokenizer.json`` for the corpus' training split, trained and saved if missing."""
    return trained_tokenizer(cache_dir, corpus.texts("train"), vocab_size, seed)


def given_tokenizer(cache_dir: Path, path: str | Path, vocab_size: int) -> Path:
    """A copy, under ``cache_dir``, of the user's ``tokenizer.json`` (``data.tokenizer``), checked.

    Token files are written next to their tokenizer; the copy keeps them out of the folder
    the tokenizer came from (a pretraining run, perhaps read-only). The copy is keyed by
    the file's bytes, so an edited tokenizer never reuses stale token files. An imported
    tokenizer (a ``tokenizer_config.json`` beside it) is copied with a ``tokenizer_config.json``
    that names its roles (:func:`~ptft.data.tokenizer.write_tokenizer_config`), and the key
    covers the roles too.
    """
    source = Path(path).expanduser()
    if source.is_dir():
        source = source / TOKENIZER_FILE
    if not source.is_file():
        raise ConfigError(
            f"data.tokenizer={path}: no such file; pass the path of a tokenizer.json "
            "or data.tokenizer=null to train one on the training split"
        )
    data = source.read_bytes()
    try:
        tokenizer = Tokenizer.from_str(data.decode())
    except Exception as e:  # the Rust parser raises a bare Exception
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"data.tokenizer={path} is not a tokenizers JSON file ({first_line}); fix the path"
        ) from e
    specials = tokenizer_specials(tokenizer, source.parent, source=f"data.tokenizer={path}")
    size = tokenizer.get_vocab_size()
    if size > vocab_size:
        raise ConfigError(
            f"data.tokenizer={path} has {size} tokens, more than data.vocab_size={vocab_size}; "
            f"raise data.vocab_size to at least {size}"
        )
    key = hashlib.sha256(data)
    if not specials.native:
        key.update(json.dumps(specials.to_dict(), sort_keys=True).encode())
    copy = cache_dir / f"tokenizer-given-{key.hexdigest()[:16]}" / TOKENIZER_FILE
    if not (copy.is_file() and copy.read_bytes() == data):
        if not specials.native:  # first: a reader never finds the copy without its roles
            write_tokenizer_config(copy.parent, specials, tokenizer)
        write_atomic(copy, data)
    return copy


class TokenBlocksDataModule(SplitLoaders):
    """Blocks of ``block_size + 1`` tokens of the texts a subclass supplies in ``load_splits``.

    ``tokenizer`` is the path of a ``tokenizer.json`` to use as is (a fine-tune must encode
    text as its pretraining did); without it one is trained on the training split.
    ``with_labels`` is accepted for the run's sake and ignored: language-model pretraining
    has no labels, every split yields token blocks only.
    """

    def __init__(
        self,
        cache_dir: NonEmptyStr,
        input_shape: Sequence[PositiveInt],
        vocab_size: PositiveInt = 8192,
        block_size: PositiveInt = 128,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 0,
        split_seed: Seed = 0,
        val_fraction: HeldOut = 0.1,
        test_fraction: HeldOut = 0.1,
        tokenizer: TokenizerPath | None = None,
        with_labels: bool = False,
    ) -> None:
        check_arguments(TokenBlocksDataModule.__init__, "data", locals())
        super().__init__()
        if list(input_shape) != [block_size]:
            raise ConfigError(
                f"data.input_shape={list(input_shape)} must be [data.block_size]=[{block_size}]"
            )
        if vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too small; use data.vocab_size>={MIN_VOCAB_SIZE}"
            )
        if block_size < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(
                "data.block_size, data.batch_size and data.eval_batch_size must be at least 1"
            )
        if not (
            0.0 <= val_fraction < 1.0
            and 0.0 <= test_fraction < 1.0
            and val_fraction + test_fraction < 1.0
        ):
            raise ConfigError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} "
                "must be in [0, 1) with a sum below 1; lower them"
            )
        self.cache_dir = Path(cache_dir).expanduser()
        self.input_shape = (block_size,)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.tokenizer = tokenizer
        self.tokenizer_path: Path | None = None
        self.token_files: dict[str, TokenFile] = {}
        self.manifest: dict = {}

    def load_splits(self) -> tuple[dict[str, list[str]], dict]:
        """The documents of each split (``SPLITS`` keys) and a manifest describing them."""
        raise NotImplementedError

    def _build(self) -> None:
        """Texts, tokenizer and token files: read from the cache, or built and cached."""
        if self.token_files:
            return
        # a given tokenizer is checked first: a wrong path fails before the data is read
        given = (
            given_tokenizer(self.cache_dir, self.tokenizer, self.vocab_size)
            if self.tokenizer
            else None
        )
        texts, manifest = self.load_splits()
        if given is not None:
            path = given
        else:
            path = trained_tokenizer(
                self.cache_dir, texts["train"], self.vocab_size, self.split_seed
            )
            size = load_tokenizer(path).get_vocab_size()
            if size > self.vocab_size:
                raise ConfigError(
                    f"{path} has {size} tokens, more than data.vocab_size={self.vocab_size}; "
                    "delete it"
                )
        self.token_files = {split: build_token_file(path, texts[split], split) for split in SPLITS}
        self.tokenizer_path, self.manifest = path, manifest

    def prepare_data(self) -> None:
        self._build()  # rank 0 only: later ranks read the cache in setup

    def setup(self, stage: str | None = None) -> None:
        self._build()

    def dataset(self, split: str, train: bool) -> PackedBlocks:
        return PackedBlocks(self.token_files[split], self.block_size, with_next=True)


class PydocTextDataModule(TokenBlocksDataModule):
    """Blocks of ``block_size + 1`` tokens of Python docstrings; train/val/test split by source
    file."""

    def load_splits(self) -> tuple[dict[str, list[str]], dict]:
        corpus = build_corpus(
            self.cache_dir,
            seed=self.split_seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )
        return {split: corpus.texts(split) for split in SPLITS}, corpus.manifest
