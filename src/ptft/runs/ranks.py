"""Which process of a multi-process run this is, read from the environment alone (no torch
import: the entry points ask before a run starts)."""

from __future__ import annotations

import os

#: set in the environment of every child process that ``ptft.runs.distributed`` starts (ranks > 0)
WORKER_ENV = "PTFT_DDP_WORKER"


def is_relaunched_worker() -> bool:
    """Whether this process is a child (rank > 0 of its node) started by ptft's DDP launcher."""
    return os.environ.get(WORKER_ENV) == "1"


def is_worker_process() -> bool:
    """A DDP process other than global rank 0: relaunched by ptft, or started by a cluster
    (torchrun's ``RANK``, SLURM's ``SLURM_PROCID``)."""
    if is_relaunched_worker():
        return True
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return rank.isdigit() and int(rank) > 0
