"""What a run prints: other libraries' duplicate handlers, adverts and warnings that do not
apply to ptft's data. Called by the entry points when a run starts, never at import."""

from __future__ import annotations

import logging
import warnings

#: warnings that say nothing to a ptft user (the data sets live in memory: worker
#: processes would only add start-up time; Lightning 2.6 on torch 2.13 warns of LeafSpec)
IGNORED_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*treespec, LeafSpec.*",
)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()  # Lightning's product adverts


def quiet_libraries() -> None:
    """Route Lightning's and torchmetrics' records through the root logger only (under Hydra
    they already reach the console and the run's log file: their own handlers only double
    them), drop Lightning's adverts and ignore :data:`IGNORED_WARNINGS`. Idempotent."""
    import lightning.pytorch  # noqa: F401 -- it installs its handler when imported

    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdverts())
