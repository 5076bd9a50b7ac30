"""Close the distributed process group before a worker process exits.

A gloo process group that is still alive when the interpreter shuts down can abort the
process from a C++ destructor ("terminate called without an active exception"), which turns
a finished DDP run into a failed one. Each worker therefore waits for its peers and destroys
the group from an ``atexit`` hook, after Lightning has finished with it.
"""

from __future__ import annotations

import atexit
import logging
from datetime import timedelta

import lightning as L
import torch.distributed as dist

log = logging.getLogger(__name__)

_registered = False


def close_process_group(timeout: timedelta = timedelta(seconds=60)) -> None:
    """Wait for every rank (gloo: bounded by ``timeout``), then destroy the default group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timeout)
        else:
            dist.barrier()
    except Exception as error:  # a peer already gone: nothing left to wait for
        log.debug("barrier before closing the process group failed: %s", error)
    dist.destroy_process_group()


class ProcessGroupCleanup(L.Callback):
    """Registers :func:`close_process_group` at exit in every process that joins a group."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _registered
        if not _registered and dist.is_available() and dist.is_initialized():
            atexit.register(close_process_group)
            _registered = True
