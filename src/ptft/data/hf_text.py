"""A Hugging Face ``datasets`` source as packed token blocks, for language-model pretraining.

``data.path`` is anything ``datasets.load_dataset`` reads: a hub name (``wikitext`` with
``data.name=wikitext-2-raw-v1``) or a builder over local files (``text``, ``json``, ``csv``,
``parquet`` with ``data.data_files``). ``data.splits`` maps ptft's train/val/test to the
source's split names; a val or test split the source lacks is carved out of its train split
by the seeded hash of the example index (``pydoc_corpus.split_of``), so the carve is stable.
Blank texts are dropped. ``datasets`` is an optional dependency (``pip install 'ptft[hf]'``),
imported only when the data is loaded; its cache lives under ``cache_dir/hf`` with
ptft's tokenizer and token files. Nothing here forces offline mode: a hub name downloads
when the network allows it, local files load without one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ptft.config.bounds import NonEmptyStr
from ptft.data.pydoc_corpus import SPLITS, split_of, texts_hash
from ptft.data.text import TokenBlocksDataModule
from ptft.errors import ConfigError

log = logging.getLogger(__name__)

#: ptft split → the split name most sources use
DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _expand(data_files: Any) -> Any:
    """``data_files`` with ``~`` expanded in every path (str, list or split → str/list)."""
    if isinstance(data_files, str):
        return os.path.expanduser(data_files)
    if isinstance(data_files, Mapping):
        return {k: _expand(v) for k, v in data_files.items()}
    if isinstance(data_files, Sequence):
        return [_expand(v) for v in data_files]
    return data_files


class HFTextDataModule(TokenBlocksDataModule):
    """Blocks of ``block_size + 1`` tokens of one text column of a Hugging Face data set."""

    def __init__(
        self,
        path: NonEmptyStr,
        cache_dir: NonEmptyStr,
        input_shape: Sequence[int],
        name: str | None = None,
        data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
        text_column: NonEmptyStr = "text",
        splits: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        # the token-block settings (vocab_size, block_size, batches, split, tokenizer) are the
        # base's
        super().__init__(cache_dir, input_shape, **kwargs)
        unknown = set(splits or {}) - set(SPLITS)
        if unknown:
            raise ConfigError(
                f"data.splits has unknown keys {sorted(unknown)}; use only train, val and test"
            )
        self.path = path
        self.name = name
        self.data_files = data_files
        self.text_column = text_column
        self.splits = {**DEFAULT_SPLITS, **(splits or {})}

    def _load(self) -> Any:
        """The ``DatasetDict`` of every split of the source."""
        try:
            import datasets
        except ImportError as e:
            raise ConfigError(
                "data=hf_text needs Hugging Face datasets: pip install 'ptft[hf]'"
            ) from e
        try:
            loaded = datasets.load_dataset(
                self.path,
                self.name,
                data_files=_expand(self.data_files),
                cache_dir=str(self.cache_dir / "hf"),
                # never a data set's loading script (datasets < 3 ran them by default)
                trust_remote_code=False,
            )
        except Exception as e:  # network, missing file, unknown name: datasets raises many types
            first_line = (str(e).splitlines() or [""])[0]
            raise ConfigError(
                f"data.path={self.path}: could not load ({type(e).__name__}: {first_line}); "
                "check data.path, data.name and data.data_files (offline, only local files and "
                "cached data sets load)"
            ) from e
        if not isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(
                f"data.path={self.path}: expected a data set with named splits, "
                f"got {type(loaded).__name__}"
            )
        return loaded

    def _texts(self, dataset: Any, split: str) -> list[str | None]:
        """The text column of one source split (blanks and ``None`` kept, so indices hold)."""
        columns = dataset.column_names
        if self.text_column not in columns:
            raise ConfigError(
                f"data.text_column={self.text_column}: the {split} split of {self.path} "
                "has no such column; "
                f"set data.text_column to one of {', '.join(columns)}"
            )
        dtype = getattr(dataset.features[self.text_column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise ConfigError(
                f"data.text_column={self.text_column} holds {dtype or 'nested values'}, not text; "
                f"set data.text_column to a string column of {', '.join(columns)}"
            )
        return list(dataset[self.text_column])

    def load_splits(self) -> tuple[dict[str, list[str]], dict]:
        loaded = self._load()
        available = list(loaded.keys())
        if self.splits["train"] not in loaded:
            raise ConfigError(
                f"data.splits.train={self.splits['train']}: {self.path} has no such split; "
                f"set it to one of {', '.join(available)}"
            )
        carved = [s for s in ("val", "test") if self.splits[s] not in loaded]
        if carved:
            log.info(
                "%s has splits %s: carving %s out of %s "
                "(data.val_fraction=%s, data.test_fraction=%s)",
                self.path,
                available,
                "/".join(carved),
                self.splits["train"],
                self.val_fraction,
                self.test_fraction,
            )
        raw: dict[str, list[str | None]] = {name: [] for name in SPLITS}
        for index, text in enumerate(
            self._texts(loaded[self.splits["train"]], self.splits["train"])
        ):
            split = split_of(str(index), self.split_seed, self.val_fraction, self.test_fraction)
            raw[split if split in carved else "train"].append(text)
        for split in SPLITS[1:]:
            if split not in carved:
                raw[split] = self._texts(loaded[self.splits[split]], self.splits[split])
        texts = {name: [t for t in items if t and t.strip()] for name, items in raw.items()}
        empty = [name for name in SPLITS if not texts[name]]
        if empty:
            raise ConfigError(
                f"data.path={self.path}: the {'/'.join(empty)} split has no non-blank text "
                f"in column {self.text_column}; "
                "use more data or raise data.val_fraction/data.test_fraction"
            )
        manifest = {
            "source": "hf_text",
            "path": self.path,
            "name": self.name,
            "data_files": self.data_files,
            "text_column": self.text_column,
            "source_splits": {
                s: (f"{self.splits['train']} (carved)" if s in carved else self.splits[s])
                for s in SPLITS
            },
            "seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "splits": {
                name: {
                    "documents": len(items),
                    "chars": sum(map(len, items)),
                    "texts_hash": texts_hash(items),
                }
                for name, items in texts.items()
            },
        }
        return texts, manifest
