"""The two labelled tasks on the standard-library docstrings, tokenized for a Transformer.

* ``data=pydoc_package`` (sequence classification): a docstring → its top-level package.
* ``data=pydoc_names`` (sequence generation): a function's first docstring paragraph → its name.

Both use the corpus split of ``data=pydoc_text`` (by top-level class or function), so a model
pretrained there never saw a val/test docstring. A text is framed the way the pretraining
stream frames a document, ``<eos> text <eos>``, so the pretrained model reads familiar input;
a generation pair is ``<eos> prompt <sep> target <eos>`` with the loss on ``target <eos>``.
Batches are padded (``<pad>`` = 0) to their longest example, never to a fixed length. An
imported tokenizer frames and pads with its own special tokens (BERT's ``[CLS] text [SEP]``;
see :mod:`ptft.data.tokenizer`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ptft.config.bounds import (
    Fraction,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Seed,
    check_arguments,
)
from ptft.data import tokenizer as tok
from ptft.data.images import label_subset
from ptft.data.loaders import SplitLoaders
from ptft.data.masking import IGNORE_INDEX
from ptft.data.pydoc_corpus import SPLITS, PydocCorpus, build_corpus, name_task, package_task
from ptft.data.text import HeldOut, TokenizerPath, given_tokenizer, trained_tokenizer
from ptft.data.tokenizer import (
    MIN_VOCAB_SIZE,
    PAD_ID,
    PTFT_SPECIALS,
    SpecialTokens,
    read_tokenizer,
)
from ptft.errors import ConfigError
from ptft.files import write_atomic

log = logging.getLogger(__name__)


def frame_text(
    tokenizer: Tokenizer,
    text: str,
    max_length: int,
    specials: SpecialTokens = PTFT_SPECIALS,
    second: str | None = None,
) -> list[int]:
    """``<eos> text <eos>`` (:func:`ptft.data.tokenizer.frame_text`), the text truncated so the
    whole fits in ``max_length`` tokens; with ``second``, a sentence pair (:func:`framed_text`)."""
    return framed_text(tokenizer, text, max_length, specials, second)[0]


def framed_text(
    tokenizer: Tokenizer,
    text: str,
    max_length: int,
    specials: SpecialTokens = PTFT_SPECIALS,
    second: str | None = None,
) -> tuple[list[int], bool]:
    """:func:`frame_text`'s ids and whether the text was truncated.

    A sentence pair (``second``) is one text, the two joined by the tokenizer's ``sep`` (else
    its ``eos``): ``<eos> a <sep> b <eos>``, BERT's ``[CLS] a [SEP] b [SEP]``; when it is too
    long, the longer of the two loses tokens from its end first.
    """
    room = max_length - len(tok.frame_text(specials, []))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if second is None:
        return tok.frame_text(specials, ids[:room]), len(ids) > room
    other = tokenizer.encode(second, add_special_tokens=False).ids
    joiner = specials.sep if specials.sep is not None else specials.eos
    room -= 1
    keep_a, keep_b = len(ids), len(other)
    while keep_a + keep_b > max(room, 0):  # longest first, as transformers truncates a pair
        if keep_a >= keep_b:
            keep_a -= 1
        else:
            keep_b -= 1
    truncated = keep_a < len(ids) or keep_b < len(other)
    return tok.frame_text(specials, [*ids[:keep_a], joiner, *other[:keep_b]]), truncated


def frame_pair(
    tokenizer: Tokenizer,
    prompt: str,
    target: str,
    max_length: int,
    specials: SpecialTokens = PTFT_SPECIALS,
) -> tuple[list[int], int]:
    """``<eos> prompt <sep> target <eos>`` (:func:`ptft.data.tokenizer.frame_pair`) and the
    index of the first target token.

    The target is kept whole (it must fit with room for a prompt token); the prompt is
    truncated from its end when the pair is longer than ``max_length``.
    """
    tokens, start, _ = framed_pair(tokenizer, prompt, target, max_length, specials)
    return tokens, start


def framed_pair(
    tokenizer: Tokenizer,
    prompt: str,
    target: str,
    max_length: int,
    specials: SpecialTokens = PTFT_SPECIALS,
) -> tuple[list[int], int, bool]:
    """:func:`frame_pair`'s tokens and first target index, and whether the prompt was
    truncated."""
    target_ids = tokenizer.encode(target, add_special_tokens=False).ids
    framing, scored = tok.frame_pair(specials, [], target_ids)
    room = max_length - len(framing)  # the target, its <eos> and the frame around the prompt
    if room < 1:
        n = sum(label != tok.IGNORE_INDEX for label in scored)
        raise ConfigError(
            f"a target of {n} tokens ({target!r}) leaves no room for a prompt in "
            f"data.max_length={max_length}; raise data.max_length"
        )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    tokens, _ = tok.frame_pair(specials, prompt_ids[:room], target_ids)
    start = len(tok.prompt_prefix(specials, prompt_ids[:room]))
    return tokens, start, len(prompt_ids) > room


def pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    """Right-pad integer rows to the longest one: ``(B, T_max)`` int64."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


class ClassificationExamples(Dataset):
    """Framed token ids and a class index per example; batches are ``(tokens, labels)``."""

    def __init__(self, ids: list[list[int]], labels: Sequence[int], pad_id: int = PAD_ID) -> None:
        self.ids, self.labels = ids, [int(y) for y in labels]
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.ids[index], self.labels[index]

    @staticmethod
    def collate(items: list[tuple[list[int], int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
        return pad([ids for ids, _ in items], pad_id), torch.tensor([y for _, y in items])


class GenerationExamples(Dataset):
    """Framed prompt → target pairs; batches are ``(tokens, labels)`` where ``labels[:, t]``
    is the token to predict after position ``t`` on the target, -100 elsewhere."""

    def __init__(self, pairs: list[tuple[list[int], int]], pad_id: int = PAD_ID) -> None:
        self.pairs = pairs
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.pairs[index]

    @staticmethod
    def collate(items: list[tuple[list[int], int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
        tokens = pad([ids for ids, _ in items], pad_id)
        labels = torch.full_like(tokens, IGNORE_INDEX)
        for i, (ids, start) in enumerate(items):
            # position t predicts token t + 1: the first target token is read off the <sep>
            labels[i, start - 1 : len(ids) - 1] = torch.as_tensor(ids[start:])
        return tokens, labels


class PaddedExamplesDataModule(SplitLoaders):
    """What every datamodule of framed, padded examples shares (the pydoc tasks, your own
    labelled text): ``datasets`` per split (set by ``setup``), the tokenizer and its special
    roles, and loaders that pad each batch with the tokenizer's pad id."""

    batch_size: int
    eval_batch_size: int
    num_workers: int
    cache_dir: Path
    vocab_size: int
    #: the ``tokenizer.json`` to use (``data.tokenizer``; a fine-tuning run passes the
    #: pretraining checkpoint's), or None to train one on the training split
    tokenizer_file: str | None

    def __init__(
        self,
        *,
        cache_dir: str,
        input_shape: Sequence[int],
        vocab_size: int,
        max_length: int,
        tokenizer: str | None,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        split_seed: int,
        val_fraction: float,
        test_fraction: float,
        label_fraction: float,
        subset_seed: int,
    ) -> None:
        """The settings every such datamodule takes, checked together (a subclass checks each
        value's bounds against its own signature first, ``check_arguments``)."""
        super().__init__()
        if list(input_shape) != [max_length]:
            raise ConfigError(
                f"data.input_shape={list(input_shape)} must be [data.max_length]=[{max_length}]"
            )
        if vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too small; use data.vocab_size>={MIN_VOCAB_SIZE}"
            )
        if max_length < 4:
            raise ConfigError(
                f"data.max_length={max_length} cannot hold a framed text; use data.max_length>=4"
            )
        if not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"data.label_fraction must be in (0, 1], got {label_fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction} "
                "leave no training rows; lower them"
            )
        self.cache_dir = Path(cache_dir).expanduser()
        self.input_shape = (max_length,)
        self.vocab_size, self.max_length = vocab_size, max_length
        self.tokenizer_file = tokenizer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.split_seed, self.val_fraction, self.test_fraction = (
            split_seed,
            val_fraction,
            test_fraction,
        )
        self.label_fraction, self.subset_seed = label_fraction, subset_seed
        self.tokenizer_path: Path | None = None
        #: the roles of the tokenizer's special tokens (ptft's until ``setup`` reads them)
        self.specials: SpecialTokens = PTFT_SPECIALS
        self.datasets: dict[str, Dataset] = {}
        self.manifest: dict = {}

    def prepare_tokenizer(self, train_texts: Callable[[], Sequence[str]], seed: int) -> Tokenizer:
        """The given tokenizer (``tokenizer_file``, copied under ``cache_dir``), or one trained
        on ``train_texts()`` and cached; sets ``tokenizer_path`` and ``specials``."""
        if self.tokenizer_file:
            path = given_tokenizer(self.cache_dir, self.tokenizer_file, self.vocab_size)
        else:
            path = trained_tokenizer(self.cache_dir, train_texts(), self.vocab_size, seed)
        self.tokenizer_path = path
        tokenizer, self.specials = read_tokenizer(path)
        return tokenizer

    def dataset(self, split: str, train: bool) -> Dataset:
        return self.datasets[split]

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            **self.sampling(dataset, train),  # a training order a resumed run takes up
            # padded with the tokenizer's pad id (its eos where it has no pad token)
            collate_fn=partial(dataset.collate, pad_id=dataset.pad_id),  # type: ignore[attr-defined]
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class PydocLabelledDataModule(PaddedExamplesDataModule):
    """What both labelled tasks share: the corpus split, the tokenizer and padded loaders.

    ``tokenizer`` is a ``tokenizer.json`` to use (a fine-tuning run passes the pretraining
    checkpoint's); without it, the one ``data=pydoc_text`` trains on the same training split
    with the same ``vocab_size`` and ``split_seed`` is reused, or trained and cached.
    """

    def __init__(
        self,
        cache_dir: NonEmptyStr,
        input_shape: Sequence[PositiveInt],
        vocab_size: PositiveInt = 8192,
        max_length: PositiveInt = 128,
        tokenizer: TokenizerPath | None = None,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 0,
        split_seed: Seed = 0,
        val_fraction: HeldOut = 0.1,
        test_fraction: HeldOut = 0.1,
        label_fraction: Fraction = 1.0,
        subset_seed: Seed = 0,
        with_labels: bool = True,
    ) -> None:
        check_arguments(PydocLabelledDataModule.__init__, "data", locals())
        super().__init__(
            cache_dir=cache_dir,
            input_shape=input_shape,
            vocab_size=vocab_size,
            max_length=max_length,
            tokenizer=tokenizer,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            label_fraction=label_fraction,
            subset_seed=subset_seed,
        )

    def load_tokenizer(self, corpus: PydocCorpus) -> Tokenizer:
        # the tokenizer data=pydoc_text trains: on the whole training split of the corpus
        return self.prepare_tokenizer(lambda: corpus.texts("train"), self.split_seed)

    def build(self, corpus: PydocCorpus, tokenizer: Tokenizer) -> dict[str, Dataset]:
        """The task's train/val/test datasets (the train split already cut to
        ``label_fraction``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        corpus = build_corpus(
            self.cache_dir,
            seed=self.split_seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )
        self.datasets = self.build(corpus, self.load_tokenizer(corpus))
        self.manifest = {**corpus.manifest, "sizes": {s: len(d) for s, d in self.datasets.items()}}
        for split in SPLITS:
            if len(self.datasets[split]) == 0:
                raise ConfigError(
                    f"the {split} split of {type(self).__name__} is empty; "
                    "raise data.val_fraction / data.test_fraction"
                )

    def prepare_data(self) -> None:
        self.setup()  # rank 0 builds the caches; other ranks read them in setup


def _write_labels(path: Path, labels: list[str]) -> None:
    write_atomic(path, json.dumps(labels, indent=1) + "\n")


class PydocPackageDataModule(PydocLabelledDataModule):
    """Docstring → index of its top-level package among the ``num_classes`` most frequent.

    ``label_names`` (index order) is written to ``cache_dir`` and into every checkpoint.
    """

    def __init__(self, *args, num_classes: PositiveInt = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_classes = num_classes
        self.label_names: list[str] = []

    def build(self, corpus: PydocCorpus, tokenizer: Tokenizer) -> dict[str, Dataset]:
        examples, self.label_names = package_task(corpus, self.num_classes)
        train_hash = corpus.manifest["splits"]["train"]["texts_hash"][:16]
        _write_labels(
            self.cache_dir / f"package-labels-{train_hash}-k{self.num_classes}.json",
            self.label_names,
        )
        datasets = {}
        for split, pairs in examples.items():
            ids = [frame_text(tokenizer, text, self.max_length, self.specials) for text, _ in pairs]
            labels = np.array([y for _, y in pairs])
            if split == "train":  # stratified, with at least one docstring of every package
                keep = label_subset(labels, self.label_fraction, self.subset_seed)
                ids, labels = [ids[i] for i in keep], labels[keep]
            datasets[split] = ClassificationExamples(ids, labels.tolist(), self.specials.pad_id)
        return datasets


class PydocNamesDataModule(PydocLabelledDataModule):
    """First paragraph of a public function's docstring → the function's name."""

    def build(self, corpus: PydocCorpus, tokenizer: Tokenizer) -> dict[str, Dataset]:
        datasets = {}
        for split, pairs in name_task(corpus).items():
            framed = [
                frame_pair(tokenizer, summary, name, self.max_length, self.specials)
                for summary, name in pairs
            ]
            if split == "train" and self.label_fraction < 1.0:
                count = max(1, round(self.label_fraction * len(framed)))
                keep = np.sort(
                    np.random.default_rng(self.subset_seed).permutation(len(framed))[:count]
                )
                framed = [framed[i] for i in keep]
            datasets[split] = GenerationExamples(framed, self.specials.pad_id)
        return datasets
