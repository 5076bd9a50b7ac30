"""Checkpoint files written whole or not at all.

Lightning's ``TorchCheckpointIO`` opens the checkpoint's own path and writes into it: a run
killed during the write leaves a truncated ``.ckpt`` where the last good one was.
:class:`AtomicCheckpointIO` writes a hidden temporary file in the same directory (a rename
across file systems is a copy, and not atomic), flushes it to the disk, and renames it onto the
checkpoint's path: a reader, or a resumed run, finds the old file or the new one, whole. A
checkpoint that cannot be written stops the run with one line (:class:`ptft.errors.ConfigError`),
instead of a traceback or, worse, a run that goes on with nothing saved.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ptft.errors import ConfigError

_HOST = socket.gethostname().replace(".", "-")


def _temporary(path: Path) -> Path:
    """The hidden temporary file a write of ``path`` goes through (this host and process)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete what a killed writer of ``path`` on this host left (its process is gone)."""
    for leftover in path.parent.glob(f".{path.name}.{_HOST}.*.tmp"):
        pid = leftover.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def write_whole(path: Path, save: Any) -> None:
    """Call ``save(file)`` on a temporary file next to ``path``, make it durable (``fsync``),
    and rename it onto ``path``; the temporary file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as handle:
            save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic within one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # the rename itself reaches the disk with the directory's entry
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, durable writes of local files (see the module); remote
    paths (``s3://`` …) are written by Lightning as before."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        try:
            write_whole(target, lambda handle: torch.save(checkpoint, handle))
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
            raise ConfigError(
                f"cannot write the checkpoint {target} ({reason}); make {target.parent} writable "
                "(or free space there), or write the run elsewhere (hydra.run.dir=…)"
            ) from err
