"""Atomic writes: the file is whole or untouched, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from ptft.files import atomic_path, write_atomic


def test_write_atomic_writes_bytes_and_text_and_makes_the_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "file.json"
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    write_atomic(path, "tëxt")  # replaces it, as UTF-8
    assert path.read_bytes() == "tëxt".encode()
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "tokens.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.bin"]
