"""The user's own ``.txt`` files as packed token blocks, for language-model pretraining.

``data.files`` is a glob (``notes/**/*.txt``; relative to the current directory, ``~``
expanded). Each file is one document, or one document per paragraph with
``split_paragraphs``. Files go to train/val/test by the same seeded hash of their path as the
docstring corpus (``pydoc_corpus.split_of``), taken relative to the glob's fixed leading
folders, so a file keeps its split when the folder moves or other files come and go. With
too few files for every split to get one, documents are split instead (and a warning says
so). Tokenizer and token files are cached under ``cache_dir`` like every token-block source.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptft.config.bounds import NonEmptyStr
from ptft.data.pydoc_corpus import SPLITS, split_of, texts_hash
from ptft.data.text import TokenBlocksDataModule
from ptft.errors import ConfigError

log = logging.getLogger(__name__)

_MAGIC = re.compile(r"[*?[]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def glob_root(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no glob character (``a/b/**/*.txt`` →
    ``a/b``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    if len(fixed) == len(parts):  # a plain file name: its folder is the root
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def find_files(files: str) -> tuple[Path, list[Path]]:
    """The glob's root and the regular files it matches, sorted; ``ConfigError`` when none."""
    pattern = os.path.expanduser(files)
    if not os.path.isabs(pattern):
        pattern = os.path.join(os.getcwd(), pattern)
    matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        if os.path.isdir(pattern):  # a folder matches itself, not its files
            hint = f"use '{files.rstrip('/')}/**/*.txt' for the files in that folder"
        else:
            hint = (
                f"check the path (relative globs start at {os.getcwd()}) "
                "and quote the glob on the command line"
            )
        raise ConfigError(f"data.files={files}: no file matches; {hint}")
    return glob_root(pattern), matches


def read_documents(path: Path, split_paragraphs: bool) -> list[str]:
    """The non-blank documents of one file: the whole text, or its blank-line-separated
    paragraphs."""
    try:
        # utf-8-sig drops the byte-order mark some editors write; universal newlines make
        # Windows line ends "\n", so the same text tokenizes the same on every system
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"data.files: {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
            "convert it to UTF-8 or leave it out of the glob"
        ) from e
    pieces = _PARAGRAPH_BREAK.split(text) if split_paragraphs else [text]
    return [p.strip() for p in pieces if p.strip()]


def split_documents(
    docs: Sequence[tuple[str, list[str]]], seed: int, val_fraction: float, test_fraction: float
) -> tuple[dict[str, list[str]], str]:
    """Documents per split, and ``"file"`` or ``"document"``: the unit that was split.

    ``docs`` holds ``(key, documents)`` per file, ``key`` the file's path relative to the
    glob's root. Whole files go to one split; when a split ends up empty, each document is
    placed by the hash of ``f"{key}:{index}"`` instead.
    """
    by_file: dict[str, list[str]] = {name: [] for name in SPLITS}
    for key, texts in docs:
        by_file[split_of(key, seed, val_fraction, test_fraction)].extend(texts)
    if all(by_file.values()):
        return by_file, "file"
    by_doc: dict[str, list[str]] = {name: [] for name in SPLITS}
    for key, texts in docs:
        for index, text in enumerate(texts):
            by_doc[split_of(f"{key}:{index}", seed, val_fraction, test_fraction)].append(text)
    return by_doc, "document"


class TextFilesDataModule(TokenBlocksDataModule):
    """Blocks of ``block_size + 1`` tokens of the text files ``files`` matches; split by file."""

    def __init__(
        self,
        files: NonEmptyStr,
        cache_dir: NonEmptyStr,
        input_shape: Sequence[int],
        split_paragraphs: bool = False,
        **kwargs: Any,
    ) -> None:
        # the token-block settings (vocab_size, block_size, batches, split, tokenizer) are the
        # base's
        super().__init__(cache_dir, input_shape, **kwargs)
        self.files = files
        self.split_paragraphs = split_paragraphs

    def load_splits(self) -> tuple[dict[str, list[str]], dict]:
        root, paths = find_files(self.files)
        docs = [
            (p.relative_to(root).as_posix(), read_documents(p, self.split_paragraphs))
            for p in paths
        ]
        docs = [(key, texts) for key, texts in docs if texts]
        if not docs:
            raise ConfigError(
                f"data.files={self.files}: all {len(paths)} matching files are empty; "
                "add text to them"
            )
        splits, unit = split_documents(docs, self.split_seed, self.val_fraction, self.test_fraction)
        num_docs = sum(len(texts) for _, texts in docs)
        if unit == "document":
            log.warning(
                "data.files=%s: %d files are too few to give every split a file; "
                "split their %d documents instead",
                self.files,
                len(docs),
                num_docs,
            )
        empty = [name for name in SPLITS if not splits[name]]
        if empty:
            raise ConfigError(
                f"data.files={self.files}: {num_docs} documents leave the {'/'.join(empty)} "
                "split empty; add files, set data.split_paragraphs=true or raise "
                "data.val_fraction/data.test_fraction"
            )
        manifest = {
            "source": "text_files",
            "files": self.files,
            "root": str(root),
            "num_files": len(docs),
            "num_documents": num_docs,
            "split_paragraphs": self.split_paragraphs,
            "split_by": unit,
            "seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "splits": {
                name: {
                    "documents": len(texts),
                    "chars": sum(map(len, texts)),
                    "texts_hash": texts_hash(texts),
                }
                for name, texts in splits.items()
            },
        }
        return splits, manifest
