"""Stdlib docstring corpus: ast extraction, skipped test code, split by unit, cache, tasks."""

from __future__ import annotations

import hashlib
import platform
import re
from collections import Counter
from pathlib import Path
from textwrap import dedent

import pytest

from ptft.data import pydoc_corpus as pc
from ptft.errors import ConfigError

OS_PY = '''\
"""Operating system helpers.

Second paragraph of the module docstring.
"""

import sys


def abspath(path):
    """Return the absolute version of a path.

    The path is joined with the current directory.
    """
    return path


def _private(x):
    """A private helper."""


def no_doc():
    return 1


if sys.platform == "win32":
    def getcwd():
        """Return a string
        for the current directory."""
else:
    def getcwd():
        """Return the current directory."""


class Stat:
    """Result of stat().

    Fields are read-only.
    """

    def size(self):
        """Size in bytes."""

    def __repr__(self):
        """Readable form."""

    async def refresh(self):
        """Refresh the fields.
        """

    def outer(self):
        def inner():
            """An inner function."""
'''

# (kind, qualified name, cleaned text) expected from OS_PY, in source order
OS_RECORDS = [
    ("module", "os", "Operating system helpers.\n\nSecond paragraph of the module docstring."),
    (
        "function",
        "abspath",
        "Return the absolute version of a path.\n\nThe path is joined with the current directory.",
    ),
    ("function", "_private", "A private helper."),
    ("function", "getcwd", "Return a string\nfor the current directory."),
    ("function", "getcwd", "Return the current directory."),
    ("class", "Stat", "Result of stat().\n\nFields are read-only."),
    ("function", "Stat.size", "Size in bytes."),
    ("function", "Stat.__repr__", "Readable form."),
    ("function", "Stat.refresh", "Refresh the fields."),
    ("function", "Stat.outer.<locals>.inner", "An inner function."),
]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def doc_module(doc: str, functions: dict[str, str] | None = None) -> str:
    body = f'"""{doc}"""\n'
    for name, fdoc in (functions or {}).items():
        body += f'\n\ndef {name}():\n    """{fdoc}"""\n'
    return body


@pytest.fixture
def fake_stdlib(tmp_path) -> Path:
    root = tmp_path / "lib"
    write(root, "os.py", OS_PY)
    write(root, "email/__init__.py", doc_module("Email package."))
    write(root, "email/mime/text.py", doc_module("MIME text.", {"encode": "Encode the body."}))
    # everything below must be skipped
    write(root, "test/test_os.py", doc_module("Tests for os."))
    write(root, "email/tests/test_mime.py", doc_module("Tests for email."))
    write(root, "idlelib/idle_test/test_x.py", doc_module("Idle tests."))
    write(root, "idlelib/editor.py", doc_module("The editor."))
    write(root, "site-packages/thirdparty.py", doc_module("Not the stdlib."))
    write(root, "lib-dynload/x.py", doc_module("Not importable."))
    write(root, "config-3.11-x86_64-linux-gnu/python-config.py", doc_module("Build helper."))
    write(root, "__pycache__/cached.py", doc_module("Cache."))
    write(root, "broken.py", '"""Never seen."""\ndef f(:\n')
    write(root, "notes.txt", "Not Python.")
    # enough files for every split to get some
    for i in range(40):
        write(
            root,
            f"pkg{i % 4}/mod{i}.py",
            doc_module(f"Module number {i}.", {f"func{i}": f"Do thing {i}."}),
        )
    return root


def all_records(corpus: pc.PydocCorpus) -> list[pc.DocRecord]:
    return [r for split in pc.SPLITS for r in corpus.splits[split]]


def test_docstrings_of_modules_classes_functions_and_methods_are_found():
    records = pc.extract_docstrings(OS_PY.encode(), "os.py")
    assert [(r.kind, r.name, r.text) for r in records] == OS_RECORDS
    assert {(r.path, r.package) for r in records} == {("os.py", "os")}

    nested = pc.extract_docstrings(b'"""Text."""\nclass A:\n    """A."""\n', "email/mime/text.py")
    assert [(r.package, r.kind, r.name) for r in nested] == [
        ("email", "module", "email.mime.text"),
        ("email", "class", "A"),
    ]
    init = pc.extract_docstrings(b'"""Pkg."""\n', "email/__init__.py")
    assert [(r.package, r.name) for r in init] == [("email", "email")]


def test_test_packages_unimportable_dirs_and_broken_files_are_skipped(fake_stdlib, tmp_path):
    corpus = pc.build_corpus(
        tmp_path / "cache", root=fake_stdlib, val_fraction=0.2, test_fraction=0.2
    )
    paths = {r.path for r in all_records(corpus)}
    expected = {"os.py", "email/__init__.py", "email/mime/text.py", "idlelib/editor.py"}
    expected |= {f"pkg{i % 4}/mod{i}.py" for i in range(40)}
    assert paths == expected
    texts = {r.text for r in all_records(corpus)}
    for skipped in (
        "Tests for os.",
        "Tests for email.",
        "Idle tests.",
        "Not the stdlib.",
        "Never seen.",
    ):
        assert skipped not in texts
    assert corpus.manifest["num_files"] == len(expected)
    assert corpus.manifest["num_records"] == len(OS_RECORDS) + 1 + 2 + 1 + 80


def test_no_unit_is_in_two_splits_and_every_unit_is_in_one(fake_stdlib, tmp_path):
    corpus = pc.build_corpus(
        tmp_path / "cache", root=fake_stdlib, val_fraction=0.2, test_fraction=0.2
    )
    units = {split: {pc.split_unit(r) for r in corpus.splits[split]} for split in pc.SPLITS}
    assert all(units[s] for s in pc.SPLITS), units  # 40 files of 2 units at 20%: none is empty
    assert not units["train"] & units["val"]
    assert not units["train"] & units["test"]
    assert not units["val"] & units["test"]
    # a class and its methods (inner functions included) are one unit, in one split
    stat = [
        split
        for split in pc.SPLITS
        for r in corpus.splits[split]
        if r.path == "os.py" and (r.name == "Stat" or r.name.startswith("Stat."))
    ]
    assert len(stat) == 5 and len(set(stat)) == 1
    assert pc.split_unit(pc.DocRecord("os.py", "os", "module", "os", "x")) == "os.py::"
    assert pc.split_unit(pc.DocRecord("a/b.py", "a", "function", "C.f.<locals>.g", "x")) == (
        "a/b.py::C"
    )
    for split in pc.SPLITS:
        assert corpus.manifest["splits"][split]["units"] == len(units[split])
        assert corpus.manifest["splits"][split]["records"] == len(corpus.splits[split])


def test_split_is_stable_across_builds_and_changed_by_the_seed(fake_stdlib, tmp_path):
    def assignment(seed: int, cache: str) -> dict[str, str]:
        corpus = pc.build_corpus(
            tmp_path / cache, root=fake_stdlib, seed=seed, val_fraction=0.2, test_fraction=0.2
        )
        return {pc.split_unit(r): split for split in pc.SPLITS for r in corpus.splits[split]}

    first, again = assignment(0, "a"), assignment(0, "b")  # second build from scratch
    assert first == again
    assert assignment(1, "c") != first


def test_split_fractions_are_honoured_on_average():
    n = 20_000
    counts = Counter(pc.split_of(f"pkg/mod{i}.py", 3, 0.05, 0.05) for i in range(n))
    # each share is a binomial proportion: sd = sqrt(p (1-p) / n) ≈ 0.0015; allow 5 sd
    tolerance = 5 * (0.05 * 0.95 / n) ** 0.5
    assert abs(counts["val"] / n - 0.05) < tolerance
    assert abs(counts["test"] / n - 0.05) < tolerance


def test_second_build_reads_the_cache_and_manifest_records_version_and_hash(
    fake_stdlib, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    first = pc.build_corpus(cache, root=fake_stdlib)
    (records_file,) = cache.glob("*.jsonl")
    mtime = records_file.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the corpus was rebuilt instead of read from the cache")

    monkeypatch.setattr(pc, "extract_all", fail)
    second = pc.build_corpus(cache, root=fake_stdlib)
    assert second.splits == first.splits
    assert records_file.stat().st_mtime_ns == mtime
    assert second.manifest["python_version"] == platform.python_version()
    assert second.manifest["content_hash"] == hashlib.sha256(records_file.read_bytes()).hexdigest()
    assert platform.python_version() in records_file.name

    # a changed source is a new cache entry, built again
    monkeypatch.undo()
    write(fake_stdlib, "email/__init__.py", doc_module("Email package, revised."))
    third = pc.build_corpus(cache, root=fake_stdlib)
    assert "Email package, revised." in {r.text for r in all_records(third)}
    assert third.manifest["content_hash"] != first.manifest["content_hash"]
    assert len(list(cache.glob("*.jsonl"))) == 2


def test_package_labels_are_the_k_most_frequent_eligible_packages(tmp_path):
    root = tmp_path / "lib"
    counts = {"alpha": 15, "beta": 10, "gamma": 5, "delta": 5, "distutils": 20, "tomllib": 20}
    for package, n in counts.items():
        # one module docstring and n - 1 functions: n units of one record each
        doc = doc_module(f"{package}.", {f"f{j}": f"{package} {j}." for j in range(n - 1)})
        write(root, f"{package}/__init__.py", doc)
    # the most frequent of all, but one class is one unit: larger than any held-out share
    methods = "".join(f'    def f{j}(self):\n        """epsilon {j}."""\n' for j in range(30))
    write(root, "epsilon.py", "class E:\n" + methods)
    corpus = pc.build_corpus(tmp_path / "cache", root=root, val_fraction=0.2, test_fraction=0.2)

    examples, labels = pc.package_task(corpus, k=3)
    # distutils and tomllib are frequent but version-dependent; delta beats gamma on the name tie
    assert labels == ["alpha", "beta", "delta"]
    # each package holds out round(20%) of its records in val and in test: 3, 2, 1
    expected = {
        "train": {"alpha": 9, "beta": 6, "delta": 3},
        "val": {"alpha": 3, "beta": 2, "delta": 1},
        "test": {"alpha": 3, "beta": 2, "delta": 1},
    }
    for split in pc.SPLITS:
        assert Counter(labels[y] for _, y in examples[split]) == expected[split]
    for text, y in examples["train"]:
        assert text.startswith(labels[y])
    assert pc.package_task(corpus, k=4)[1] == ["alpha", "beta", "delta", "gamma"]
    with pytest.raises(ConfigError, match="lower k"):
        pc.package_task(corpus, k=5)


def test_each_package_holds_out_its_share_over_many_units():
    def record(path: str, kind: str, name: str) -> pc.DocRecord:
        return pc.DocRecord(path, pc.package_of(path), kind, name, f"{path} {name}")

    # "big": 100 functions in 10 files, and one class of 50 records; "tiny": 3 functions
    records = [record(f"big/m{i % 10}.py", "function", f"f{i}") for i in range(100)]
    records += [record("big/m0.py", "class", "Huge")]
    records += [record("big/m0.py", "function", f"Huge.m{j}") for j in range(49)]
    records += [record("tiny.py", "function", f"t{j}") for j in range(3)]
    splits = pc.assign_splits(records, seed=0, val_fraction=0.1, test_fraction=0.1)
    per_record = [splits[pc.split_unit(r)] for r in records]
    big = Counter(s for r, s in zip(records, per_record, strict=True) if r.package == "big")
    # 150 records: exactly round(15.0) in each held-out split, none of them the class
    assert big == {"train": 120, "val": 15, "test": 15}
    assert splits["big/m0.py::Huge"] == "train"
    held_out_files = {r.path for r, s in zip(records, per_record, strict=True) if s != "train"}
    assert len(held_out_files) >= 5
    # 3 records: round(0.3) = 0 held out
    assert {splits[f"tiny.py::t{j}"] for j in range(3)} == {"train"}
    assert pc.assign_splits(reversed(records), 0, 0.1, 0.1) == splits  # order does not matter
    assert pc.assign_splits(records, 1, 0.1, 0.1) != splits


def test_package_labels_are_counted_on_the_training_split(fake_stdlib, tmp_path):
    corpus = pc.build_corpus(
        tmp_path / "cache", root=fake_stdlib, val_fraction=0.3, test_fraction=0.3
    )
    examples, labels = pc.package_task(corpus, k=3)
    train_counts = Counter(r.package for r in corpus.splits["train"])
    assert [train_counts[name] for name in labels] == sorted(
        (train_counts[name] for name in labels), reverse=True
    )
    assert min(train_counts[name] for name in labels) >= max(
        (c for name, c in train_counts.items() if name not in labels), default=0
    )
    for split in pc.SPLITS:
        assert len(examples[split]) == sum(r.package in labels for r in corpus.splits[split])


def test_name_task_uses_the_first_paragraph_and_skips_private_names(tmp_path):
    root = tmp_path / "lib"
    write(root, "os.py", OS_PY)
    write(
        root,
        "extra.py",
        dedent('''\
        def blank():
            """

            Starts with a blank line, so this is the first paragraph.
            """

        def spaces():
            """   """
        '''),
    )
    corpus = pc.build_corpus(tmp_path / "cache", root=root, val_fraction=0.0, test_fraction=0.0)
    pairs = pc.name_task(corpus)["train"]
    assert pairs == [
        ("Starts with a blank line, so this is the first paragraph.", "blank"),
        ("Return the absolute version of a path.", "abspath"),
        ("Return a string for the current directory.", "getcwd"),
        ("Return the current directory.", "getcwd"),
        ("Size in bytes.", "size"),
        ("Refresh the fields.", "refresh"),
        ("An inner function.", "inner"),
    ]
    assert pc.first_paragraph("One\n   \nTwo") == "One"


def test_bad_fractions_and_an_empty_root_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        pc.build_corpus(tmp_path / "cache", root=tmp_path, val_fraction=0.6, test_fraction=0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no Python source files"):
        pc.build_corpus(tmp_path / "cache", root=tmp_path / "empty")


def squeezed(text: str) -> str:
    """Whitespace runs as one space (written apart from ``pc.normalized``, to check it)."""
    return re.sub(r"\s+", " ", text).strip()


def opening(text: str) -> str:
    """The first blank-line-separated paragraph, squeezed."""
    return squeezed(re.split(r"\n[ \t]*\n", text.strip())[0])


def overlaps(texts: dict[str, set[str]]) -> dict[str, int]:
    """How many texts of each held-out split an earlier split also has."""
    return {
        "val in train": len(texts["val"] & texts["train"]),
        "test in train": len(texts["test"] & texts["train"]),
        "test in val": len(texts["test"] & texts["val"]),
    }


NO_OVERLAP = {"val in train": 0, "test in train": 0, "test in val": 0}


def held_out_overlaps(corpus: pc.PydocCorpus) -> dict[str, dict[str, int]]:
    """Counted from the splits themselves: the corpus' texts (what pretraining reads), the
    package task's texts, and the name task's prompts against the opening paragraph of every
    docstring of the earlier splits."""
    docs = {s: {squeezed(r.text) for r in corpus.splits[s]} for s in pc.SPLITS}
    examples, _ = pc.package_task(corpus, k=2)
    package = {s: {squeezed(t) for t, _ in examples[s]} for s in pc.SPLITS}
    names = pc.name_task(corpus)
    prompts = {s: {squeezed(p) for p, _ in names[s]} for s in pc.SPLITS}
    openings = {s: {opening(r.text) for r in corpus.splits[s]} for s in pc.SPLITS}
    return {
        "corpus": overlaps(docs),
        "package": overlaps(package),
        "names": {
            "val in train": len(prompts["val"] & openings["train"]),
            "test in train": len(prompts["test"] & openings["train"]),
            "test in val": len(prompts["test"] & openings["val"]),
        },
    }


def test_drop_seen_keeps_what_no_earlier_split_has():
    splits = {"train": ["a", "b", "b"], "val": ["b", "c", "d"], "test": ["a", "c", "e", "e"]}
    kept, dropped = pc.drop_seen(splits, key=str)
    assert kept == {"train": ["a", "b", "b"], "val": ["c", "d"], "test": ["e", "e"]}
    assert dropped == {"train": 0, "val": 1, "test": 2}
    # seen_by widens what an earlier split has (here: val shows "e" without holding it)
    kept, _ = pc.drop_seen(splits, str, {"train": {"a", "b"}, "val": {"e"}, "test": set()})
    assert kept["val"] == ["c", "d"] and kept["test"] == ["c"]


def test_no_held_out_text_occurs_in_an_earlier_split(tmp_path):
    root = tmp_path / "lib"
    # the same docstring in every file, once wrapped otherwise, and one that only opens alike
    sum_doc = ("Return the sum of two numbers.", "Return the   sum\n    of two numbers.")
    for i in range(60):
        source = doc_module(
            f"Module number {i}.",
            {
                "copy": "Return a copy of the object.",
                "add": sum_doc[i % 2],
                f"open_{i}": f"Open the resource.\n\n    Variant {i}.\n    ",
            },
        )
        write(root, f"pkg{i % 3}/mod{i}.py", source)
    # the split alone, without dropping what an earlier split has (as before split_version 2)
    records, _ = pc.load_records(tmp_path / "by_unit", root)
    assignment = pc.assign_splits(records, 0, 0.2, 0.2)
    before: dict[str, list[pc.DocRecord]] = {"train": [], "val": [], "test": []}
    for r in records:
        before[assignment[pc.split_unit(r)]].append(r)
    texts_before = {s: {squeezed(r.text) for r in before[s]} for s in pc.SPLITS}
    assert overlaps(texts_before) == {"val in train": 2, "test in train": 2, "test in val": 2}

    corpus = pc.build_corpus(tmp_path / "cache", root=root, val_fraction=0.2, test_fraction=0.2)
    assert held_out_overlaps(corpus) == {
        "corpus": NO_OVERLAP,
        "package": NO_OVERLAP,
        "names": NO_OVERLAP,
    }
    # only the repeated docstrings (copy, add: in every file, so in train too) left val and test
    repeated = {squeezed("Return a copy of the object."), squeezed(sum_doc[0])}
    for split in ("val", "test"):
        assert len(corpus.splits[split]) == sum(
            squeezed(r.text) not in repeated for r in before[split]
        )
        assert corpus.manifest["splits"][split]["dropped_seen"] == len(before[split]) - len(
            corpus.splits[split]
        )
        # a docstring that opens like a training one but goes on otherwise stays in the corpus,
        # but its opening is no name-task prompt there
        assert any(r.text.startswith("Open the resource.") for r in corpus.splits[split])
        assert [n for _, n in pc.name_task(corpus)[split]] == []
    assert corpus.manifest["split_version"] == pc.SPLIT_VERSION
    assert corpus.splits["train"] == before["train"]  # train keeps everything


@pytest.fixture(scope="module")
def stdlib_corpus(tmp_path_factory) -> pc.PydocCorpus:
    return pc.build_corpus(tmp_path_factory.mktemp("stdlib") / "cache")


def test_real_stdlib_corpus_has_the_expected_size(stdlib_corpus):
    corpus = stdlib_corpus
    m = corpus.manifest
    # about 1.8 MB of docstrings on 3.11; allow for other versions
    assert 1_000_000 < m["num_chars"] < 3_500_000
    assert m["num_records"] > 5_000
    records = all_records(corpus)
    assert not any(part in pc.TEST_DIRS for r in records for part in r.path.split("/")[:-1])
    assert ("posixpath.py", "function", "abspath") in {(r.path, r.kind, r.name) for r in records}
    assert m["splits"]["val"]["files"] > 0 and m["splits"]["test"]["files"] > 0


def test_real_stdlib_held_out_splits_share_no_text_with_training(stdlib_corpus):
    # before split_version 2 (Python 3.11.7): 21 of 794 test docstrings and 11 of 444 test
    # name prompts were training texts too
    assert held_out_overlaps(stdlib_corpus) == {
        "corpus": NO_OVERLAP,
        "package": NO_OVERLAP,
        "names": NO_OVERLAP,
    }
    m = stdlib_corpus.manifest["splits"]
    assert m["train"]["dropped_seen"] == 0
    assert m["val"]["dropped_seen"] > 0 and m["test"]["dropped_seen"] > 0


def test_real_stdlib_package_task_holds_out_every_label_in_its_share(stdlib_corpus):
    # before split_version 3 the held-out splits were one file per package: val was 51%
    # logging/__init__.py and test 51% tkinter/ttk.py (docs/text_diagnosis.md)
    examples, labels = pc.package_task(stdlib_corpus)
    train = Counter(y for _, y in examples["train"])
    for split in ("val", "test"):
        held = Counter(y for _, y in examples[split])
        n = sum(held.values())
        assert n > 250
        for y in range(len(labels)):
            # each label's share of the split is its share of train, within 3 points
            assert abs(held[y] / n - train[y] / sum(train.values())) < 0.03, (split, labels[y])
        units = Counter(
            pc.split_unit(r) for r in stdlib_corpus.splits[split] if r.package in labels
        )
        assert max(units.values()) / n < 0.08  # no class, function or file decides the split
