"""An embedded text corpus: the docstrings of the running interpreter's standard library.

The sources are parsed with :mod:`ast` (never imported, so nothing runs), every module,
class and function docstring becomes one record, and records are split into
train/val/test **by unit**, a file's top-level definition (a class with all its methods, a
function, the module docstring), stratified by package, so that no class feeds two splits and
every package's held-out records come from many units. The same docstring can
stand in two files (a pure-Python twin of a C module, a copied helper), so a val record
whose text a training record has, and a test record whose text train or val has, is dropped:
no held-out text is ever trained on, pretraining included. The corpus is cached on disk keyed
by the Python version and a hash of the sources, and two labelled tasks are derived from the
same records and split: package classification and name generation.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import platform
import re
import sysconfig
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from ptft.errors import ConfigError
from ptft.files import locked, write_atomic

#: bumped whenever the extraction rules change, so old caches are not reused
FORMAT_VERSION = 1
#: bumped whenever the rule that puts records into splits changes; written into the manifest
#: (and so into every checkpoint). The cached records do not depend on it, and what is built
#: from a split (token files, a tokenizer) is keyed by the hash of that split's texts, so a
#: changed split never reuses them. 2: val/test records whose text an earlier split has are
#: dropped (:func:`drop_seen`). 3: split by unit (file and top-level definition) filled to each
#: package's share (:func:`assign_splits`), not by whole file.
SPLIT_VERSION = 3

SPLITS = ("train", "val", "test")

#: directories that hold test suites rather than library code
TEST_DIRS = frozenset({"test", "tests", "idle_test"})

#: Top-level packages that do not exist in every Python from 3.10 to 3.13, so a package
#: classifier trained on one of these versions keeps the same label set on the others.
VERSION_DEPENDENT_PACKAGES = frozenset(
    {
        # added in 3.11
        "tomllib",
        # added in 3.12 or 3.13 (pure-Python twins and helpers of C modules)
        "_pydatetime",
        "_pylong",
        "_pyrepl",
        "_colorize",
        "_ios_support",
        "_android_support",
        "_opcode_metadata",
        # removed in 3.12 (PEP 632, PEP 594 early removals)
        "distutils",
        "asynchat",
        "asyncore",
        "imp",
        "smtpd",
        "_bootsubprocess",
        # removed in 3.13 (PEP 594 "dead batteries", lib2to3)
        "aifc",
        "cgi",
        "cgitb",
        "chunk",
        "crypt",
        "imghdr",
        "mailcap",
        "msilib",
        "nntplib",
        "pipes",
        "sndhdr",
        "sunau",
        "telnetlib",
        "uu",
        "xdrlib",
        "lib2to3",
    }
)


@dataclass(frozen=True)
class DocRecord:
    """One docstring and where it comes from."""

    path: str  # source file relative to the stdlib root, with "/" separators
    package: str  # top-level package: "os" for os.py, "email" for email/mime/text.py
    kind: str  # "module", "class" or "function" (methods are functions with a dotted name)
    name: str  # qualified name as Python's __qualname__ writes it; the module name for modules
    text: str  # the docstring, cleaned with inspect.cleandoc


@dataclass
class PydocCorpus:
    """The records of each split and a manifest (python version, hashes, counts)."""

    splits: dict[str, list[DocRecord]]
    manifest: dict

    def texts(self, split: str) -> list[str]:
        return [r.text for r in self.splits[split]]


# -- finding and parsing the sources ------------------------------------------------------


def stdlib_root() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[str]:
    """Sorted relative paths of the library's ``.py`` files, without test suites.

    Directories that are not importable package names (``site-packages``, ``lib-dynload``,
    ``config-3.11-…``) and test directories are pruned.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d.isidentifier() and d not in TEST_DIRS and d != "__pycache__"
        ]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.endswith(".py") and name[:-3].isidentifier():
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def package_of(path: str) -> str:
    """Top-level package of a relative source path (``email/mime/text.py`` → ``email``)."""
    first = path.split("/", 1)[0]
    return first[:-3] if first.endswith(".py") else first


def module_name(path: str) -> str:
    """Dotted module name of a relative source path (``email/__init__.py`` → ``email``)."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def extract_docstrings(source: bytes, path: str) -> list[DocRecord]:
    """Module, class and function docstrings of one source file, in source order.

    Raises ``SyntaxError`` (or ``ValueError`` for NUL bytes) when the file does not parse.
    """
    with warnings.catch_warnings():  # invalid escape sequences in old sources warn
        warnings.simplefilter("ignore")
        tree = ast.parse(source, filename=path)
    package = package_of(path)
    records = []

    def add(node: ast.AST, kind: str, name: str) -> None:
        doc = ast.get_docstring(node, clean=False)  # type: ignore[arg-type]
        if doc:
            # cleandoc keeps a whitespace-only last line when no other line is indented
            # ('"""Text.\n    """'); strip it so the text does not depend on that quirk
            text = inspect.cleandoc(doc).strip()
            if text:
                records.append(DocRecord(path, package, kind, name, text))

    def visit(node: ast.AST, prefix: str) -> None:
        # Recurse through every statement, not just bodies of classes, because library
        # code defines functions under `if`/`try` (e.g. platform-specific variants).
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                add(child, "class", prefix + child.name)
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                add(child, "function", prefix + child.name)
                visit(child, prefix + child.name + ".<locals>.")
            elif isinstance(child, ast.stmt):
                visit(child, prefix)

    add(tree, "module", module_name(path))
    visit(tree, "")
    return records


def extract_all(root: Path, files: Iterable[str]) -> list[DocRecord]:
    """Records of all ``files`` under ``root``; files that fail to parse are skipped."""
    records = []
    for rel in files:
        try:
            records.extend(extract_docstrings((root / rel).read_bytes(), rel))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue  # e.g. deliberately broken grammar samples
    return records


# -- split ------------------------------------------------------------------------------


def split_of(path: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split of one source file, from a hash of ``seed`` and its path.

    A file's split depends on nothing else (not on the other files, not on the machine),
    so it is stable across runs, machines and Python versions that share the file.
    """
    u = _unit_hash(seed, path)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)


#: a package's held-out share of a split is spread over at least this many units
UNITS_PER_SHARE = 4


def split_unit(record: DocRecord) -> str:
    """The unit a record is split with: its file and top-level definition (``path::Class``
    holds a class's own docstring and all its methods'; ``path::`` is the module docstring).

    Finer than a file, so no single file (``tkinter/__init__.py`` holds 521 docstrings) makes
    up half of a held-out split, and coarse enough that a class is never split up: a held-out
    method's siblings are held out with it.
    """
    top = "" if record.kind == "module" else record.name.split(".", 1)[0]
    return f"{record.path}::{top}"


def assign_splits(
    records: Iterable[DocRecord], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """The split of every unit (:func:`split_unit`), stratified by top-level package.

    Each package's units are taken in the order of their seeded hashes; a unit goes to test
    if it fits in what test still needs (of ``round(test_fraction * records of the package)``)
    and holds at most a quarter of that share (:data:`UNITS_PER_SHARE`), else to val on the
    same terms, else to train. So every package has about its share of records in each
    held-out split, spread over many units, and a large unit (``tkinter.Misc``, 144 methods)
    stays in training. A unit's split depends only on the seed and its package's units and
    sizes.
    """
    sizes = Counter(split_unit(r) for r in records)
    by_package: dict[str, list[str]] = {}
    for unit in sorted(sizes):
        by_package.setdefault(package_of(unit.split("::", 1)[0]), []).append(unit)
    splits: dict[str, str] = {}
    for units in by_package.values():
        total = sum(sizes[u] for u in units)
        need = {"test": round(total * test_fraction), "val": round(total * val_fraction)}
        # at most a quarter of a share in one unit: each held-out share is four units or more
        most = {split: max(n // UNITS_PER_SHARE, 1) for split, n in need.items()}
        for unit in sorted(units, key=lambda u: _unit_hash(seed, u)):
            fits = (s for s in ("test", "val") if 0 < sizes[unit] <= min(need[s], most[s]))
            splits[unit] = split = next(fits, "train")
            if split != "train":
                need[split] -= sizes[unit]
    return splits


T = TypeVar("T")


def normalized(text: str) -> str:
    """A text as compared across splits: its words joined by single spaces, so a copy that is
    indented or wrapped differently is the same text."""
    return " ".join(text.split())


def drop_seen(
    splits: Mapping[str, Sequence[T]],
    key: Callable[[T], str],
    seen_by: Mapping[str, Iterable[str]] | None = None,
) -> tuple[dict[str, list[T]], dict[str, int]]:
    """Each split (in :data:`SPLITS` order) without the items whose ``key`` an earlier split
    has, and how many each lost: val loses what train has, test what train or val has; train
    keeps everything. An earlier split "has" its items' keys, or ``seen_by[split]`` when given
    (a wider set: every text that split shows a model)."""
    seen: set[str] = set()
    kept: dict[str, list[T]] = {}
    dropped: dict[str, int] = {}
    for split in SPLITS:
        items = list(splits.get(split, []))
        kept[split] = [item for item in items if key(item) not in seen]
        dropped[split] = len(items) - len(kept[split])
        seen.update(seen_by[split] if seen_by is not None else (key(item) for item in items))
    return kept, dropped


def texts_hash(texts: Iterable[str]) -> str:
    """sha256 of a sequence of texts (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# -- cache -----------------------------------------------------------------------------


def _sources_hash(root: Path, files: list[str]) -> str:
    """Hash of the file list and bytes: cheap next to parsing, and exact as a cache key."""
    h = hashlib.sha256(f"pydoc-corpus-v{FORMAT_VERSION}".encode())
    for rel in files:
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _read_cache(records_path: Path, manifest_path: Path) -> tuple[list[DocRecord], dict] | None:
    if not (records_path.exists() and manifest_path.exists()):
        return None
    data = records_path.read_bytes()
    stored = json.loads(manifest_path.read_text())
    if hashlib.sha256(data).hexdigest() != stored.get("content_hash"):
        return None  # damaged or partial cache: rebuild
    records = [DocRecord(**json.loads(line)) for line in data.decode().splitlines()]
    return records, stored


def load_records(
    cache_dir: str | Path, root: str | Path | None = None
) -> tuple[list[DocRecord], dict]:
    """All records and the stored manifest, read from ``cache_dir`` or built and cached there."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise ConfigError(
            f"standard library directory {root} does not exist; pass an existing root"
        )
    files = source_files(root)
    if not files:
        raise ConfigError(
            f"no Python source files under {root}; pass the standard library directory"
        )
    version = platform.python_version()
    source_hash = _sources_hash(root, files)
    cache_dir = Path(cache_dir)
    stem = f"pydoc-{version}-{source_hash[:16]}"
    records_path, manifest_path = cache_dir / f"{stem}.jsonl", cache_dir / f"{stem}.json"
    cached = _read_cache(records_path, manifest_path)
    if cached is not None:
        return cached
    # of two processes that build the corpus at once, one parses; the other waits and reads it
    with locked(cache_dir / stem):
        cached = _read_cache(records_path, manifest_path)
        if cached is not None:
            return cached
        return _build_records(root, files, records_path, manifest_path, version, source_hash)


def _build_records(
    root: Path,
    files: list[str],
    records_path: Path,
    manifest_path: Path,
    version: str,
    source_hash: str,
) -> tuple[list[DocRecord], dict]:
    records = extract_all(root, files)
    if not records:
        raise ConfigError(f"no docstrings found under {root}; pass the standard library directory")
    data = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records).encode()
    stored = {
        "format_version": FORMAT_VERSION,
        "python_version": version,
        "source_hash": source_hash,
        "content_hash": hashlib.sha256(data).hexdigest(),
        "num_files": len({r.path for r in records}),
        "num_records": len(records),
        "num_chars": sum(len(r.text) for r in records),
    }
    # written then renamed, so a concurrent reader (another rank) never sees a partial file;
    # the manifest, last, holds the records' hash: a reader checks one against the other
    write_atomic(records_path, data)
    write_atomic(manifest_path, json.dumps(stored, indent=2).encode())
    return records, stored


def build_corpus(
    cache_dir: str | Path,
    root: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> PydocCorpus:
    """The docstring corpus split by unit (:func:`assign_splits`); cached under ``cache_dir``.

    ``root`` defaults to the running interpreter's standard library. A val/test record whose
    text (:func:`normalized`) an earlier split has is dropped (:func:`drop_seen`). The manifest
    holds the stored fields (``python_version``, ``content_hash`` of the cached records, counts)
    plus ``split_version``, the split settings and, per split, its files, records, records
    dropped as seen (``dropped_seen``), characters and ``texts_hash``.
    """
    if not (
        0.0 <= val_fraction < 1.0
        and 0.0 <= test_fraction < 1.0
        and val_fraction + test_fraction < 1.0
    ):
        raise ConfigError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "with a sum below 1; lower them"
        )
    records, stored = load_records(cache_dir, root)
    assignment = assign_splits(records, seed, val_fraction, test_fraction)
    by_unit: dict[str, list[DocRecord]] = {name: [] for name in SPLITS}
    for r in records:
        by_unit[assignment[split_unit(r)]].append(r)
    # a docstring found in two units of different splits is held out only where it is new
    splits, dropped = drop_seen(by_unit, lambda r: normalized(r.text))
    manifest = {
        **stored,
        "split_version": SPLIT_VERSION,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "splits": {
            name: {
                "files": len({r.path for r in rs}),
                "units": len({split_unit(r) for r in rs}),
                "records": len(rs),
                "dropped_seen": dropped[name],
                "chars": sum(len(r.text) for r in rs),
                "texts_hash": texts_hash(r.text for r in rs),
            }
            for name, rs in splits.items()
        },
    }
    return PydocCorpus(splits, manifest)


# -- labelled tasks -------------------------------------------------------------------------


def package_labels(
    corpus: PydocCorpus, k: int = 10, exclude: Iterable[str] = VERSION_DEPENDENT_PACKAGES
) -> list[str]:
    """The ``k`` packages with the most training docstrings, most frequent first.

    Among the packages with docstrings in every split, counted on the training split (so the
    ranking does not look at val/test sizes); ties are broken by name so the list is
    deterministic.
    """
    if k < 2:
        raise ConfigError(f"the package task needs k >= 2 classes, got k={k}")
    excluded = set(exclude)
    # a label must be testable: only packages with docstrings in every split (a package whose
    # units are all larger than a quarter of its held-out share has none held out)
    present = [{r.package for r in corpus.splits[s]} for s in SPLITS]
    eligible = set.intersection(*present) - excluded
    counts = Counter(r.package for r in corpus.splits["train"] if r.package in eligible)
    if len(counts) < k:
        raise ConfigError(
            f"only {len(counts)} packages have docstrings in every split, fewer than k={k}; lower k"
        )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:k]]


def package_task(
    corpus: PydocCorpus, k: int = 10, exclude: Iterable[str] = VERSION_DEPENDENT_PACKAGES
) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Docstring → index of its top-level package, per split, and the ordered label names.

    Docstrings of packages outside the label set are dropped. Save the label list with the
    data and the checkpoint: the class index means nothing without it.
    """
    labels = package_labels(corpus, k, exclude)
    index = {name: i for i, name in enumerate(labels)}
    examples = {
        split: [(r.text, index[r.package]) for r in records if r.package in index]
        for split, records in corpus.splits.items()
    }
    return examples, labels


_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def first_paragraph(text: str) -> str:
    """The first paragraph of a cleaned docstring, its lines joined by single spaces."""
    return " ".join(_PARAGRAPH_BREAK.split(text.strip(), maxsplit=1)[0].split())


def name_task(corpus: PydocCorpus) -> dict[str, list[tuple[str, str]]]:
    """First paragraph of a function's docstring → the function's (unqualified) name, per split.

    Private names (leading underscore, dunders included) are skipped: they are
    implementation details, and their docstrings rarely describe a public operation. Two
    docstrings that differ after their first paragraph make the same prompt, so a val/test
    pair whose prompt opens any docstring of an earlier split (one the pretraining read, or
    a training pair's) is dropped.
    """
    examples: dict[str, list[tuple[str, str]]] = {}
    for split, records in corpus.splits.items():
        pairs = []
        for r in records:
            name = r.name.rsplit(".", 1)[-1]
            if r.kind != "function" or name.startswith("_"):
                continue
            summary = first_paragraph(r.text)
            if summary:
                pairs.append((summary, name))
        examples[split] = pairs
    openings = {
        split: {normalized(first_paragraph(r.text)) for r in records}
        for split, records in corpus.splits.items()
    }
    kept, _ = drop_seen(examples, lambda pair: normalized(pair[0]), openings)
    return kept
