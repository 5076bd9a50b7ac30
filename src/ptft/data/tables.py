"""Rows of the user's own labelled data: local CSV, TSV, JSONL and Parquet files, or a Hugging
Face ``datasets`` source, read as columns (``{name: [values]}``), each way a file can be bad one
:class:`~ptft.errors.ConfigError` line that names the file (and the line, where there is one).

The format follows the extension (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``). CSV, TSV and
Parquet go through pandas (pyarrow for Parquet), a Hugging Face source through ``datasets``:
all three come with the ``hf`` extra and are imported only when such a file is read. JSONL is
read line by line with the standard library. Text must be UTF-8 (a byte-order mark is
dropped); a cell that is empty stays the empty string, never NaN.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ptft.errors import ConfigError

#: extension → format
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
#: what a split's rows are: one list of values per column, all of the same length
Columns = dict[str, list[Any]]


def _needs_hf(what: str) -> ConfigError:
    return ConfigError(f"{what} needs pandas, pyarrow and datasets: pip install 'ptft[hf]'")


def expand_files(key: str, files: str | Sequence[str]) -> list[Path]:
    """The files of one glob or a list of globs (``~`` expanded, relative to the current
    directory), sorted and each once; ``ConfigError`` naming ``key`` for a pattern that matches
    no file."""
    patterns = [files] if isinstance(files, str) else list(files)
    if not patterns:
        raise ConfigError(f"{key} is empty; give a file, a glob or a list of them")
    found: dict[Path, None] = {}
    for pattern in patterns:
        full = os.path.expanduser(str(pattern))
        if not os.path.isabs(full):
            full = os.path.join(os.getcwd(), full)
        matches = sorted(Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(
                f"{key}: no file matches {pattern} (relative paths start at {os.getcwd()}; "
                "quote a glob on the command line)"
            )
        found.update(dict.fromkeys(matches))
    return list(found)


def _text(path: Path) -> str:
    """The file as text: UTF-8, or a ``ConfigError`` that names the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from None


def _jsonl(path: Path, text: str) -> Columns:
    rows: list[Mapping[str, Any]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path}:{number}: not JSON ({e.msg}, column {e.colno}); "
                "each line of a .jsonl file is one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}:{number}: a JSON {type(row).__name__}, not an object; "
                "each line of a .jsonl file is one JSON object"
            )
        rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _frame(path: Path, fmt: str, text: str | None) -> Columns:
    try:
        import pandas as pd
    except ImportError:
        raise _needs_hf(f"reading {path}") from None
    try:
        if fmt == "parquet":
            try:
                frame = pd.read_parquet(path)
            except ImportError:
                raise _needs_hf(f"reading {path}") from None
        else:
            # keep_default_na=False: an empty cell is "", and "NA" or "null" stay text
            frame = pd.read_csv(
                io.StringIO(text or ""),
                sep="\t" if fmt == "tsv" else ",",
                keep_default_na=False,
            )
    except ConfigError:
        raise
    except Exception as e:  # pandas and pyarrow raise many types for a malformed file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: not a readable {fmt.upper()} file ({first}); fix it") from e
    return {str(c): [_plain(v) for v in frame[c].tolist()] for c in frame.columns}


def _plain(value: Any) -> Any:
    """pandas' missing values as None; everything else as it is."""
    try:
        import pandas as pd

        if value is pd.NA or (isinstance(value, float) and value != value):
            return None
    except ImportError:  # pragma: no cover - pandas read the value
        pass
    return value


def read_file(path: Path) -> Columns:
    """The columns of one CSV, TSV, JSONL or Parquet file; ``ConfigError`` for an unknown
    extension, bytes that are not UTF-8, a bad JSONL line and a file without rows."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{path}: unknown format {path.suffix or '(no extension)'}; "
            f"use one of {', '.join(FORMATS)}"
        )
    text = None if fmt == "parquet" else _text(path)
    if text is not None and not text.strip():
        raise ConfigError(f"{path} is empty; add rows or leave it out")
    columns = _jsonl(path, text or "") if fmt == "jsonl" else _frame(path, fmt, text)
    if not columns or not len(next(iter(columns.values()))):
        raise ConfigError(f"{path} is empty (no rows); add rows or leave it out")
    return columns


def concat(parts: Sequence[tuple[str, Columns]], needed: Sequence[str], key: str) -> Columns:
    """The ``needed`` columns of several sources (``(name, columns)``), one after another;
    ``ConfigError`` naming ``key`` for a source without one of them, listing those it has."""
    out: Columns = {name: [] for name in needed}
    for source, columns in parts:
        for name in needed:
            if name not in columns:
                raise ConfigError(
                    f"{key}={name}: {source} has no such column; "
                    f"its columns are {', '.join(columns)}"
                )
            out[name].extend(columns[name])
    return out


def read_hf(
    path: str, name: str | None, data_files: Any, cache_dir: Path
) -> dict[str, tuple[str, Any]]:
    """The splits of a Hugging Face source: a folder written by ``save_to_disk``, or anything
    ``datasets.load_dataset`` reads (a builder over local files, a data set in the local cache,
    a hub name when the network allows). Returns split name → (a label for errors, the
    ``Dataset``)."""
    try:
        import datasets
    except ImportError:
        raise _needs_hf(f"data.path={path}") from None
    local = Path(path).expanduser()
    if path.startswith(("./", "../", "/", "~", ".\\")) and not local.exists():
        # a path, not a hub name: say so at once rather than ask the hub for it
        raise ConfigError(f"data.path={path}: no such folder; fix the path")
    try:
        if local.is_dir() and any(
            (local / f).is_file() for f in ("dataset_dict.json", "state.json")
        ):
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(
                path,
                name,
                data_files=data_files,
                cache_dir=str(cache_dir / "hf"),
                trust_remote_code=False,  # never a data set's loading script
            )
    except Exception as e:  # missing files, offline, unknown name: datasets raises many types
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError(
            f"data.path={path}: could not load ({type(e).__name__}: {first}); check data.path, "
            "data.name and data.data_files (offline, only local files and cached data sets load)"
        ) from e
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return {split: (f"the {split} split of {path}", ds) for split, ds in loaded.items()}


def hf_columns(dataset: Any, needed: Sequence[str]) -> Columns:
    """The ``needed`` columns of a ``datasets.Dataset`` (the check that they exist is
    :func:`concat`'s)."""
    # every column is named (an error lists them), only the needed ones are read
    return {c: list(dataset[c]) if c in needed else [] for c in dataset.column_names}
