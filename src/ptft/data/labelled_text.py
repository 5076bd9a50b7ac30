"""Your own labelled text: ``data=text_classification`` (text → class) and ``data=text_pairs``
(source → target), from local CSV, TSV, JSONL or Parquet files or a Hugging Face data set.

Both serve the batches of the docstring tasks (``data=pydoc_package``, ``data=pydoc_names``,
:mod:`ptft.data.pydoc_tasks`): texts framed as the tokenizer's family frames them, padded per
batch with its pad id, so ``model=sequence_classifier`` and ``model=sequence_generator`` train
on them from scratch or from a pretrained checkpoint (whose tokenizer the handoff passes as
``data.tokenizer``).

Where the rows come from (one of three):

* ``files``: one file, a glob or a list of them; split train/val/test by ``val_fraction`` and
  ``test_fraction`` with ``split_seed`` (stratified by label for classification);
* ``train_files`` (and ``val_files`` / ``test_files``): a split per file set; a val or test
  split not given is carved out of the training rows as above;
* ``path`` (``name``, ``data_files``): a Hugging Face data set (``save_to_disk`` folder,
  builder over local files, the local cache), its splits named by ``split_map``; a val or test
  split the source lacks is carved out of its train split.

Classes are the training split's labels: ints in numeric order, anything else as sorted
strings; ``label_names`` goes into every checkpoint (``ptft_labels``) and ``ptft-eval``'s
report. ``num_classes`` is counted from the same rows when the config resolves
(``${ptft.num_classes:}``, :meth:`TextClassificationDataModule.count_classes`), so the model
config reads it as it reads any data set's.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ptft.config.bounds import (
    Fraction,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Seed,
    check_arguments,
)
from ptft.data import tables
from ptft.data.images import label_subset
from ptft.data.pydoc_corpus import SPLITS, texts_hash
from ptft.data.pydoc_tasks import (
    ClassificationExamples,
    GenerationExamples,
    PaddedExamplesDataModule,
    framed_pair,
    framed_text,
)
from ptft.data.text import HeldOut, TokenizerPath
from ptft.errors import ConfigError

log = logging.getLogger(__name__)

#: ptft split → the split name most Hugging Face sources use
DEFAULT_SPLIT_MAP = {"train": "train", "val": "validation", "test": "test"}


# ------------------------------------------------------------------------ reading the rows
def read_splits(
    settings: Mapping[str, Any], needed: Sequence[str], cache_dir: Path
) -> tuple[dict[str, tables.Columns | None], str]:
    """The ``needed`` columns of each split the source gives (None: carve it out of train), and
    a description of the source, from the ``files`` / ``train_files`` … / ``path`` settings."""
    files, train_files, path = (settings.get(k) for k in ("files", "train_files", "path"))
    given = [k for k, v in (("files", files), ("train_files", train_files), ("path", path)) if v]
    if len(given) != 1:
        raise ConfigError(
            "give the rows one way: data.files=…, data.train_files=… (with data.val_files, "
            f"data.test_files) or data.path=… (a Hugging Face data set); got {given or 'none'}"
        )

    def from_files(key: str, value: Any) -> tables.Columns:
        parts = [(str(p), tables.read_file(p)) for p in tables.expand_files(key, value)]
        return _concat(parts, needed, settings)

    if files:
        return {"train": from_files("data.files", files), "val": None, "test": None}, "files"
    if train_files:
        out = {"train": from_files("data.train_files", train_files)}
        for split in ("val", "test"):
            value = settings.get(f"{split}_files")
            out[split] = from_files(f"data.{split}_files", value) if value else None
        return out, "train_files"
    split_map = {**DEFAULT_SPLIT_MAP, **(settings.get("split_map") or {})}
    unknown = set(settings.get("split_map") or {}) - set(SPLITS)
    if unknown:
        raise ConfigError(
            f"data.split_map has unknown keys {sorted(unknown)}; use only train, val and test"
        )
    loaded = tables.read_hf(path, settings.get("name"), settings.get("data_files"), cache_dir)
    if split_map["train"] not in loaded:
        raise ConfigError(
            f"data.split_map.train={split_map['train']}: {path} has no such split; "
            f"set it to one of {', '.join(loaded)}"
        )
    out: dict[str, tables.Columns | None] = {}
    for split in SPLITS:
        if split_map[split] in loaded:
            source, dataset = loaded[split_map[split]]
            out[split] = _concat([(source, tables.hf_columns(dataset, needed))], needed, settings)
        else:
            out[split] = None
    return out, "path"


def _concat(
    parts: Sequence[tuple[str, tables.Columns]], needed: Sequence[str], settings: Mapping[str, Any]
) -> tables.Columns:
    """:func:`tables.concat`, its error naming the setting that names the missing column."""
    for source, columns in parts:
        for name in needed:
            if name not in columns:
                key = next(
                    (
                        f"data.{k}"
                        for k in ("text_column", "label_column", "source_column", "target_column")
                        if name == settings.get(k)
                        or (isinstance(settings.get(k), list | tuple) and name in settings[k])
                    ),
                    "data.column",
                )
                raise ConfigError(
                    f"{key}={name}: {source} has no column {name!r}; "
                    f"its columns are {', '.join(columns)}"
                )
    return tables.concat(parts, needed, "data.column")


def _file_stamp(settings: Mapping[str, Any]) -> str:
    """What the rows depend on, for memoizing a count: the settings and every file's size and
    modification time."""
    stamp = []
    for key in ("files", "train_files", "val_files", "test_files"):
        value = settings.get(key)
        if value:
            try:
                stamp += [
                    (str(p), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in tables.expand_files(f"data.{key}", value)
                ]
            except ConfigError:
                stamp.append((key, "missing"))
    return json.dumps([settings, stamp], sort_keys=True, default=str)


def label_key(value: Any, where: str) -> int | str:
    """A label as ptft keeps it: an int (a float that is one, too) or a string."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{where}: a row has no label; fill it in or drop the row")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return str(value)


def class_names(labels: Sequence[int | str]) -> list[int | str]:
    """The classes of the training labels: ints in numeric order when every label is an int,
    else every label as a string, sorted."""
    distinct = set(labels)
    if all(isinstance(v, int) for v in distinct):
        return sorted(distinct)
    return sorted({str(v) for v in distinct})


def _split_indices(
    n: int, labels: np.ndarray | None, fractions: Mapping[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Seeded indices of ``n`` rows for train and each split in ``fractions`` (its share of all
    rows), stratified by ``labels`` when given."""
    from sklearn.model_selection import train_test_split

    order = {"train": np.arange(n)}
    rest = np.arange(n)
    for split, fraction in fractions.items():
        share = fraction / (len(rest) / n)  # of what is left
        stratify = labels[rest] if labels is not None else None
        try:
            rest, held = train_test_split(
                rest, test_size=share, stratify=stratify, random_state=seed
            )
        except ValueError as e:
            raise ConfigError(
                f"cannot carve a {split} split of {fraction:g} out of {n} rows ({e}); "
                f"raise data.{split}_fraction or give data.{split}_files"
            ) from None
        order[split] = np.sort(held)
    order["train"] = np.sort(rest)
    return order


def _token_stats(lengths: Sequence[int]) -> str:
    a = np.asarray(lengths)
    return (
        f"tokens per example mean {a.mean():.1f} / p95 {np.percentile(a, 95):.0f} / max {a.max()}"
    )


class LabelledRowsDataModule(PaddedExamplesDataModule):
    """What both datamodules share: where the rows come from, the split, the tokenizer."""

    def __init__(
        self,
        cache_dir: NonEmptyStr,
        input_shape: Sequence[PositiveInt],
        files: str | list[str] | None = None,
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        path: str | None = None,
        name: str | None = None,
        data_files: Any = None,
        split_map: Mapping[str, str] | None = None,
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
        check_arguments(LabelledRowsDataModule.__init__, "data", locals())
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
        self.source = {
            "files": files,
            "train_files": train_files,
            "val_files": val_files,
            "test_files": test_files,
            "path": path,
            "name": name,
            "data_files": data_files,
            "split_map": dict(split_map) if split_map else None,
        }
        #: examples cut to ``max_length`` in the last ``setup``, per split
        self.truncated: dict[str, int] = {}

    def columns(self) -> list[str]:
        """The columns a subclass reads, in the order it reads them."""
        raise NotImplementedError

    def column_settings(self) -> dict[str, Any]:
        """The subclass's column settings, as the config names them (for the manifest)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {**self.source, **self.column_settings()}

    def read_rows(self) -> tuple[dict[str, tables.Columns | None], str]:
        return read_splits(self.settings(), self.columns(), self.cache_dir)

    def carve(
        self, rows: dict[str, tables.Columns | None], labels: list | None = None
    ) -> dict[str, tables.Columns]:
        """Every split's rows: those the source gives, the others carved out of train."""
        fractions = {s: getattr(self, f"{s}_fraction") for s in ("val", "test") if rows[s] is None}
        for split, fraction in fractions.items():
            if fraction <= 0:
                raise ConfigError(
                    f"no {split} rows: set data.{split}_fraction above 0 or give data.{split}_files"
                )
        train = rows["train"]
        assert train is not None
        out = {s: r for s, r in rows.items() if r is not None and s != "train"}
        if fractions:
            n = len(next(iter(train.values())))
            y = np.asarray([str(v) for v in labels]) if labels is not None else None
            idx = _split_indices(n, y, fractions, self.split_seed)
            for split, chosen in idx.items():
                out[split] = {c: [v[i] for i in chosen] for c, v in train.items()}
        else:
            out["train"] = train
        return out

    def prepare_data(self) -> None:
        self.setup()  # rank 0 trains the tokenizer; other ranks read it in setup

    def _log_summary(self, extra: str, lengths: Sequence[int]) -> None:
        sizes = " / ".join(f"{len(self.datasets[s])} {s}" for s in SPLITS)
        cut = sum(self.truncated.values())
        log.info(
            "%s: %s examples; %s%s; %s truncated to data.max_length=%d",
            type(self).__name__,
            sizes,
            f"{extra}; " if extra else "",
            _token_stats(lengths),
            cut,
            self.max_length,
        )

    def _manifest(self, splits: Mapping[str, tables.Columns], unit: str) -> dict[str, Any]:
        return {
            "source": type(self).__name__,
            **{k: v for k, v in self.source.items() if v},
            **self.column_settings(),
            "split_by": unit,
            "seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "truncated": dict(self.truncated),
            "splits": {
                s: {
                    "examples": len(self.datasets[s]),
                    "texts_hash": texts_hash(
                        [json.dumps(row, default=str) for row in zip(*cols.values(), strict=True)]
                    ),
                }
                for s, cols in splits.items()
            },
        }

    def _subset(self, n: int, labels: np.ndarray | None) -> np.ndarray:
        """The training rows ``label_fraction`` keeps (stratified when there are labels)."""
        if labels is not None:
            return label_subset(labels, self.label_fraction, self.subset_seed)
        if self.label_fraction >= 1.0:
            return np.arange(n)
        count = max(1, round(self.label_fraction * n))
        rng = np.random.default_rng(self.subset_seed)
        return np.sort(rng.permutation(n)[:count])

    def _check_nonempty(self) -> None:
        for split in SPLITS:
            if len(self.datasets[split]) == 0:
                raise ConfigError(
                    f"the {split} split of {type(self).__name__} is empty; "
                    "give more rows or raise data.val_fraction / data.test_fraction"
                )


def _text_column(value: Any) -> list[str]:
    columns = [value] if isinstance(value, str) else list(value)
    if not 1 <= len(columns) <= 2 or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(
            f"data.text_column={value}: give one column, or a list of two for sentence pairs"
        )
    return columns


def _as_text(value: Any, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise ConfigError(
            f"data.text_column={column} holds {type(value).__name__} values, not text; "
            "name a text column"
        )
    return str(value)


class TextClassificationDataModule(LabelledRowsDataModule):
    """A text (or a sentence pair) → a class; batches ``(tokens, labels)`` as ``pydoc_package``.

    ``num_classes`` is the number of classes in the training rows; the config fills it in
    with ``${ptft.num_classes:}`` (:meth:`count_classes`), and a value that differs from the
    rows is refused.
    """

    def __init__(
        self,
        *args: Any,
        text_column: str | list[str] = "text",
        label_column: NonEmptyStr = "label",
        num_classes: PositiveInt | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.text_columns = _text_column(text_column)
        self.text_column, self.label_column = text_column, label_column
        self.num_classes = num_classes
        self.label_names: list[str] = []

    def columns(self) -> list[str]:
        return [*self.text_columns, self.label_column]

    def column_settings(self) -> dict[str, Any]:
        return {"text_column": self.text_column, "label_column": self.label_column}

    @classmethod
    def count_classes(cls, settings: Mapping[str, Any]) -> int:
        """The number of classes of the training rows that ``settings`` (the ``data`` config)
        names: read once per process for the same files and settings (the config resolves it
        more than once)."""
        keys = (
            *("files", "train_files", "path", "name", "data_files", "split_map"),
            *("text_column", "label_column", "cache_dir"),
        )
        return _count_classes({k: settings.get(k) for k in keys})

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rows, unit = self.read_rows()
        train_labels = [
            label_key(v, f"data.label_column={self.label_column}")
            for v in rows["train"][self.label_column]  # type: ignore[index]
        ]
        classes = class_names(train_labels)
        if self.num_classes is not None and self.num_classes != len(classes):
            raise ConfigError(
                f"data.num_classes={self.num_classes}, but the training rows have "
                f"{len(classes)} classes; drop data.num_classes (it is counted)"
            )
        self._check_class_sizes(train_labels, classes, rows)
        splits = self.carve(rows, train_labels)
        index = {str(c): i for i, c in enumerate(classes)}
        tokenizer = self.prepare_tokenizer(
            lambda: [t for c in self.text_columns for t in map(str, splits["train"][c])],
            self.split_seed,
        )
        lengths: list[int] = []
        for split in SPLITS:
            self.datasets[split] = self._examples(split, splits[split], index, tokenizer, lengths)
        self.num_classes, self.label_names = len(classes), [str(c) for c in classes]
        self._check_nonempty()
        counts = Counter(self.datasets["train"].labels)  # type: ignore[attr-defined]
        self.manifest = {
            **self._manifest(splits, unit),
            "labels": self.label_names,
            "train_counts": {self.label_names[k]: v for k, v in sorted(counts.items())},
        }
        shown = ", ".join(f"{self.label_names[k]} {v}" for k, v in sorted(counts.items()))
        self._log_summary(f"{len(classes)} classes (train: {shown})", lengths)

    def _check_class_sizes(
        self, labels: list[int | str], classes: list[int | str], rows: Mapping[str, Any]
    ) -> None:
        """Every class has a row for each split carved out of train (and two for scikit-learn's
        stratified split), or one line names the smallest."""
        carved = [s for s in ("val", "test") if rows[s] is None]
        if not carved:
            return
        need = max(2, 1 + len(carved))
        counts = Counter(str(v) for v in labels)
        small = min(counts, key=lambda c: (counts[c], c))
        if counts[small] < need:
            raise ConfigError(
                f"data.label_column={self.label_column}: class {small!r} has {counts[small]} "
                f"example(s), fewer than the {need} a stratified train/{'/'.join(carved)} split "
                "needs; add examples of it, drop it, or give data.val_files/data.test_files"
            )

    def _examples(
        self,
        split: str,
        columns: tables.Columns,
        index: Mapping[str, int],
        tokenizer: Tokenizer,
        lengths: list[int],
    ) -> ClassificationExamples:
        where = f"data.label_column={self.label_column}"
        labels = [str(label_key(v, where)) for v in columns[self.label_column]]
        unseen = Counter(y for y in labels if y not in index)
        if unseen:
            label, n = unseen.most_common(1)[0]
            raise ConfigError(
                f"{where}: the {split} split has label {label!r} ({n} rows) that the training "
                f"split never has (classes: {', '.join(index)}); drop those rows or add "
                "training rows of it"
            )
        y = np.array([index[v] for v in labels], dtype=np.int64)
        texts = [columns[c] for c in self.text_columns]
        keep = np.arange(len(y))
        if split == "train":  # stratified, with at least one example of every class
            keep = self._subset(len(y), y)
        ids, cut = [], 0
        for i in keep:
            a = _as_text(texts[0][i], self.text_columns[0])
            b = _as_text(texts[1][i], self.text_columns[1]) if len(texts) == 2 else None
            framed, truncated = framed_text(tokenizer, a, self.max_length, self.specials, b)
            ids.append(framed)
            cut += truncated
        self.truncated[split] = cut
        lengths.extend(len(x) for x in ids)
        return ClassificationExamples(ids, y[keep].tolist(), self.specials.pad_id)


#: class counts by what they were read from (:func:`_file_stamp`): the config resolves
#: ``data.num_classes`` several times, the files are read once
_COUNTS: dict[str, int] = {}


def _count_classes(settings: Mapping[str, Any]) -> int:
    key = _file_stamp(settings)
    if key not in _COUNTS:
        label_column = settings.get("label_column") or "label"
        cache_dir = Path(str(settings.get("cache_dir") or ".")).expanduser()
        rows, _ = read_splits(settings, [label_column], cache_dir)
        where = f"data.label_column={label_column}"
        train = rows["train"][label_column]  # type: ignore[index]
        _COUNTS[key] = len(class_names([label_key(v, where) for v in train]))
    return _COUNTS[key]


class TextPairsDataModule(LabelledRowsDataModule):
    """A source text → a target text; batches ``(tokens, labels)`` as ``pydoc_names``: framed
    ``<eos> source <sep> target <eos>`` with the loss on ``target <eos>``.

    ``template`` (``"Question: {source}\\nAnswer:"``) is applied to every source before it is
    framed; the target is kept whole, the source is cut from its end to fit ``max_length``.
    """

    def __init__(
        self,
        *args: Any,
        source_column: NonEmptyStr = "source",
        target_column: NonEmptyStr = "target",
        template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if template is not None and "{source}" not in template:
            raise ConfigError(
                f"data.template={template!r} has no {{source}}; put {{source}} where the "
                "source text goes"
            )
        self.source_column, self.target_column = source_column, target_column
        self.template = template

    def columns(self) -> list[str]:
        return [self.source_column, self.target_column]

    def column_settings(self) -> dict[str, Any]:
        return {
            "source_column": self.source_column,
            "target_column": self.target_column,
            "template": self.template,
        }

    def prompt(self, source: str) -> str:
        """``source`` in the template (``str.replace``, so braces in the text stay as they are)."""
        return source if self.template is None else self.template.replace("{source}", source)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        rows, unit = self.read_rows()
        splits = self.carve(rows)
        tokenizer = self.prepare_tokenizer(
            lambda: [
                str(t) for c in (self.source_column, self.target_column) for t in splits["train"][c]
            ],
            self.split_seed,
        )
        lengths: list[int] = []
        for split in SPLITS:
            sources = [_as_text(v, self.source_column) for v in splits[split][self.source_column]]
            targets = [_as_text(v, self.target_column) for v in splits[split][self.target_column]]
            keep = self._subset(len(sources), None) if split == "train" else range(len(sources))
            pairs, cut = [], 0
            for i in keep:
                tokens, start, truncated = framed_pair(
                    tokenizer, self.prompt(sources[i]), targets[i], self.max_length, self.specials
                )
                pairs.append((tokens, start))
                cut += truncated
            self.truncated[split] = cut
            lengths.extend(len(t) for t, _ in pairs)
            self.datasets[split] = GenerationExamples(pairs, self.specials.pad_id)
        self._check_nonempty()
        self.manifest = self._manifest(splits, unit)
        self._log_summary("", lengths)
