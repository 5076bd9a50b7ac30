"""Files written so that a reader never sees half of one: another rank reading a cache that
this one is writing, or a run killed mid-write, finds the old file or the new one, whole; and
a lock, so that of two processes building the same cache entry one builds and the other
waits, then reuses it."""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; the writes stay atomic, a race only repeats work
    fcntl = None  # type: ignore[assignment]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (its folder is made) for the block to write; renamed
    onto ``path`` when the block ends, removed if it raises. The name holds the process id
    and a random part, so processes (or threads, or hosts sharing the folder) writing the same
    file at once do not write into each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX and Windows, within one file system
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (made, with its folder, when missing) for the
    block: processes that build the same cache entry take turns. The lock file stays (removing
    it would let a third process lock a new file while the second holds the old one); the
    lock goes with the process, so a killed builder never leaves it held, and the temporary
    files it left (``<path>.*.tmp``, written under this lock only) are removed here.

    Check for the finished entry before locking (a finished cache needs no lock, and may be
    read-only) and again inside the block (another process may have just built it)."""
    path = Path(path)
    lock = path.with_name(f"{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "ab") as handle:  # "a": made when missing, never truncated
        if fcntl is None:
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # waits for the holder; freed on close
        except OSError:  # a file system without locks (some network mounts): build anyway
            yield
            return
        for leftover in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)
        yield


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, key: str = "output") -> Iterator[Path]:
    """A fresh temporary folder next to ``path`` for the block to fill; it becomes ``path`` when
    the block ends (a folder already there is replaced only then, and only with ``overwrite``)
    and is removed if the block raises, so an export that fails leaves nothing half-written.

    A non-empty ``path`` without ``overwrite`` is refused in one line before anything is
    written."""
    import shutil

    from ptft.errors import ConfigError

    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file; give a directory to write into")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(
            f"{key}={path} exists and is not empty; choose a new directory or pass overwrite=true"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    old = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
