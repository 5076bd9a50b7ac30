"""Packed token blocks of the standard-library docstring corpus, for language-model pretraining.

The corpus, the tokenizer and the token files are built once and cached under ``cache_dir``:
the tokenizer is trained on the training split only, in a directory keyed by the training
texts' hash, the vocabulary size and the split seed, so later runs (and other ranks) reuse it.
Every batch is ``(B, block_size + 1)`` token ids: a causal LM reads ``x = item[:-1]``,
``y = item[1:]``; a masked LM reads ``item[:-1]`` (one data layout serves both objectives).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ptft.data.loaders import SplitLoaders
from ptft.data.pydoc_corpus import SPLITS, PydocCorpus, build_corpus
from ptft.data.token_cache import PackedBlocks, TokenFile, build_token_file
from ptft.data.tokenizer import MIN_VOCAB_SIZE, TOKENIZER_FILE, load_tokenizer, train_tokenizer
from ptft.errors import ConfigError


def tokenizer_dir(cache_dir: Path, corpus: PydocCorpus, vocab_size: int, seed: int) -> Path:
    """Where the tokenizer of this training split, vocabulary size and split seed is cached."""
    train_hash = corpus.manifest["splits"]["train"]["texts_hash"][:16]
    return cache_dir / f"tokenizer-{train_hash}-v{vocab_size}-s{seed}"


def cached_tokenizer(cache_dir: Path, corpus: PydocCorpus, vocab_size: int, seed: int) -> Path:
    """Path of ``tokenizer.json`` for the corpus' training split, trained and saved if missing."""
    directory = tokenizer_dir(cache_dir, corpus, vocab_size, seed)
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        tokenizer = train_tokenizer(corpus.texts("train"), vocab_size)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)  # a concurrent reader never sees a partial file
    return path


class PydocTextDataModule(SplitLoaders):
    """Blocks of ``block_size + 1`` tokens of Python docstrings; train/val/test split by source file.

    ``with_labels`` is accepted for the run's sake and ignored: language-model pretraining
    has no labels, every split yields token blocks only.
    """

    def __init__(
        self,
        cache_dir: str,
        input_shape: Sequence[int],
        vocab_size: int = 8192,
        block_size: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        with_labels: bool = False,
    ) -> None:
        super().__init__()
        if list(input_shape) != [block_size]:
            raise ConfigError(f"data.input_shape={list(input_shape)} must be [data.block_size]=[{block_size}]")
        if vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(f"data.vocab_size={vocab_size} is too small; use data.vocab_size>={MIN_VOCAB_SIZE}")
        if block_size < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("data.block_size, data.batch_size and data.eval_batch_size must be at least 1")
        self.cache_dir = Path(cache_dir)
        self.input_shape = (block_size,)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.tokenizer_path: Path | None = None
        self.token_files: dict[str, TokenFile] = {}
        self.manifest: dict = {}

    def _build(self) -> None:
        """Corpus, tokenizer and token files: read from the cache, or built and cached."""
        if self.token_files:
            return
        corpus = build_corpus(self.cache_dir, seed=self.split_seed, val_fraction=self.val_fraction,
                              test_fraction=self.test_fraction)
        path = cached_tokenizer(self.cache_dir, corpus, self.vocab_size, self.split_seed)
        size = load_tokenizer(path).get_vocab_size()
        if size > self.vocab_size:
            raise ConfigError(f"{path} has {size} tokens, more than data.vocab_size={self.vocab_size}; delete it")
        self.token_files = {split: build_token_file(path, corpus.texts(split), split) for split in SPLITS}
        self.tokenizer_path, self.manifest = path, corpus.manifest

    def prepare_data(self) -> None:
        self._build()  # rank 0 only: later ranks read the cache in setup

    def setup(self, stage: str | None = None) -> None:
        self._build()

    def dataset(self, split: str, train: bool) -> PackedBlocks:
        return PackedBlocks(self.token_files[split], self.block_size, with_next=True)
