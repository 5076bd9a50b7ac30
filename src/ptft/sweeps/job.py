"""One job of a multirun that fails alone: run it, record how it ended, give the sweeper a value.

In a multirun (``ptft-train -m …``), an exception in one job (a bad value for that job, a
diverged loss) must not end the sweep. The job logs its traceback, writes ``job_status.json``
into its output directory and returns the worst value for ``model.monitor_mode``, which a
sweeper ranks last. ``ptft.sweeps.summary`` reads the status files when the multirun ends.
A single run, and every DDP process but rank 0, lets errors propagate as before.

A multirun started again into the same sweep directory (``hydra.sweep.dir=<that directory>``,
the same command) skips every job that finished: a job whose directory holds a
``job_status.json`` with status ``ok`` and the same overrides returns its recorded value
without training, and its record is marked ``reused``. Failed and killed jobs run again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ptft.errors import ConfigError
from ptft.files import write_atomic
from ptft.runs.ranks import is_worker_process

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"


@dataclass
class JobStatus:
    """What ``job_status.json`` holds: how one job ended, and its final metrics."""

    job: int | str
    status: str  # ok | failed | missing (no status file: the job was killed)
    overrides: list[str] = field(default_factory=list)
    optimized_metric: str | None = None
    monitor_mode: str = "min"
    value: float | None = None  # the optimized metric; null when the job failed
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    duration_s: float | None = None
    #: the job finished in an earlier launch of the sweep; this launch kept its result
    reused: bool = False

    def write(self, directory: Path) -> Path:
        path = Path(directory) / STATUS_FILE
        # strict JSON: a non-finite number (a NaN loss) is written as null
        record = {
            **asdict(self),
            "value": finite_or_none(self.value),
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
        }
        # atomic: a job killed while writing leaves the old record or the new one, whole
        write_atomic(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> JobStatus:
        """The record in ``path``; keys this version does not know are left out."""
        record = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def worst_value(monitor_mode: str) -> float:
    """The value a failed job returns: a sweeper that minimizes (maximizes) ranks it last."""
    return math.inf if monitor_mode == "min" else -math.inf


def is_recorded_job() -> bool:
    """True in the rank-0 process of one job of a multirun: the jobs that record their status."""
    return (
        HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
        and not is_worker_process()
    )


def one_line(err: BaseException) -> str:
    """An exception as one short line: its type and its message, lines joined."""
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def optimized_value(cfg: DictConfig, metrics: Mapping[str, float]) -> float | None:
    """The value of ``optimized_metric`` among the final metrics (None when it is null or not
    logged)."""
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def finished_before(directory: Path, overrides: list[str]) -> JobStatus | None:
    """The record of this job from an earlier launch of the sweep, when it finished (status
    ok) with the same overrides; None when the job must run."""
    path = Path(directory) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        status = JobStatus.read(path)
    except (OSError, ValueError, TypeError, AttributeError):  # not a record: run the job
        return None
    if status.status != "ok":
        return None
    if sorted(status.overrides) != sorted(overrides):
        log.warning(
            "%s records other overrides (%s): running this job again",
            path,
            " ".join(status.overrides),
        )
        return None
    return status


def run_job(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]]) -> float | None:
    """Run ``train(cfg)`` and return ``optimized_metric`` for sweepers.

    In a recorded multirun job, any exception is logged with its traceback, the job is written
    down as failed and the worst value is returned, so that the sweep goes on. A metric that was
    not logged, or is not finite, fails the job too: a sweeper cannot rank it. A job that
    finished in an earlier launch into the same sweep directory is not run again: it returns
    its recorded value.
    """
    if not is_recorded_job():
        return optimized_value(cfg, train(cfg))

    hydra_cfg = HydraConfig.get()
    directory = Path(hydra_cfg.runtime.output_dir)
    earlier = finished_before(directory, list(hydra_cfg.overrides.task))
    if earlier is not None:
        log.info(
            "job %s finished in an earlier launch (%s): not run again", earlier.job, STATUS_FILE
        )
        earlier.reused = True
        earlier.write(directory)
        return earlier.value
    mode = cfg.model.get("monitor_mode", "min") if cfg.get("model") else "min"
    status = JobStatus(
        job=hydra_cfg.job.num,
        status="ok",
        overrides=list(hydra_cfg.overrides.task),
        optimized_metric=cfg.get("optimized_metric"),
        monitor_mode=mode,
    )
    start = time.monotonic()
    try:
        status.metrics = dict(train(cfg))
        status.value = optimized_value(cfg, status.metrics)
        metric = status.optimized_metric
        if metric and status.value is None:
            raise ConfigError(
                f"optimized_metric={metric} was not logged "
                f"(final metrics: {sorted(status.metrics)})"
            )
        if status.value is not None and not math.isfinite(status.value):
            raise ConfigError(
                f"optimized_metric={metric} is {status.value}: the sweeper cannot rank it"
            )
    except Exception as err:  # noqa: BLE001 -- one failed job must not end the sweep
        log.error("job %s failed (the sweep goes on): %s", status.job, one_line(err), exc_info=True)
        status.status, status.error, status.value = "failed", one_line(err), None
    status.duration_s = round(time.monotonic() - start, 3)
    status.write(directory)
    if status.status == "failed":
        return worst_value(mode) if status.optimized_metric else None
    return status.value
