"""``sweep_summary.csv`` and ``sweep_summary.md``: every job of a multirun, best first.

A Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``): when a multirun ends,
whatever the launcher or sweeper, it reads the ``job_status.json`` that each job wrote
(``ptft.sweeps.job``) and lists each job's overrides, status, error and final metrics. Failed jobs
come after those that finished, and a job that left no status file (killed) is ``missing``.
A job that finished in an earlier launch into the same sweep directory (not run again) is
``ok`` and ``reused``.
It runs in the process that launched the sweep, so it never imports torch.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ptft.sweeps.job import STATUS_FILE, JobStatus

log = logging.getLogger(__name__)

CSV_FILE = "sweep_summary.csv"
MARKDOWN_FILE = "sweep_summary.md"
#: the order of the groups in the summary
STATUS_ORDER = {"ok": 0, "failed": 1, "missing": 2}


class SweepSummary(Callback):
    """Write the summary of a multirun into its sweep directory when it ends (never in a single
    run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect(sweep_dir)
        if not any(job.status != "missing" for job in jobs):
            return  # not a sweep of ptft-train (ptft-eval -m …): its jobs write no status
        jobs = ranked(jobs)
        write_csv(jobs, sweep_dir / CSV_FILE)
        table = markdown_table(jobs)
        (sweep_dir / MARKDOWN_FILE).write_text(
            f"# Sweep {sweep_dir}\n\n{headline(jobs)}\n\n{table}\n"
        )
        log.info("%s\n%s\n%s", sweep_dir / MARKDOWN_FILE, headline(jobs), table)


def collect(sweep_dir: Path) -> list[JobStatus]:
    """Every job directory under ``sweep_dir`` (one that holds Hydra's ``.hydra/``), with its
    status."""
    jobs = []
    for hydra_dir in sorted(sweep_dir.glob("**/.hydra")):
        job_dir = hydra_dir.parent
        try:
            jobs.append(JobStatus.read(job_dir / STATUS_FILE))
        except (OSError, ValueError, TypeError, AttributeError):  # none (killed), or not one
            jobs.append(missing_job(job_dir))
    return jobs


def missing_job(job_dir: Path) -> JobStatus:
    """A job without a status file: its number and overrides come from Hydra's own record."""
    hydra_dir = job_dir / ".hydra"
    num: int | str = job_dir.name
    overrides: list[str] = []
    try:
        num = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num
        overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    except Exception:  # noqa: BLE001 -- a half-written record still makes a row
        pass
    return JobStatus(
        job=num,
        status="missing",
        overrides=overrides,
        error=f"no {STATUS_FILE}: the job did not end",
    )


def ranked(jobs: list[JobStatus]) -> list[JobStatus]:
    """Finished jobs by their optimized metric (best first), then the others; ties by job number."""

    def key(job: JobStatus) -> tuple:
        group = STATUS_ORDER.get(job.status, len(STATUS_ORDER))
        if job.status != "ok" or job.value is None:
            return (group, 1, 0.0, job_number(job))
        score = job.value if job.monitor_mode == "min" else -job.value
        return (group, 0, score, job_number(job))

    return sorted(jobs, key=key)


def job_number(job: JobStatus) -> float:
    return float(job.job) if str(job.job).isdigit() else float("inf")


def metric_columns(jobs: list[JobStatus]) -> list[str]:
    """The optimized metric(s) first, then every other final metric, alphabetically."""
    optimized = sorted({j.optimized_metric for j in jobs if j.optimized_metric})
    others = sorted({k for j in jobs for k in j.metrics} - set(optimized))
    return optimized + others


def common_overrides(jobs: list[JobStatus]) -> list[str]:
    """The overrides every job shares (the sweep's fixed settings), in the first job's order."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    return [o for o in jobs[0].overrides if o in shared] if jobs else []


def rows(jobs: list[JobStatus], drop: list[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """The table: a row per job in the given order; ``drop`` leaves those overrides out."""
    metrics = metric_columns(jobs)
    header = ["rank", "job", "status", "overrides", *metrics, "duration_s", "error", "reused"]
    body = [
        [
            rank,
            job.job,
            job.status,
            " ".join(o for o in job.overrides if o not in drop),
            *(job.metrics.get(m) for m in metrics),
            job.duration_s,
            job.error or "",
            job.reused,
        ]
        for rank, job in enumerate(jobs, start=1)
    ]
    return header, body


def write_csv(jobs: list[JobStatus], path: Path) -> None:
    header, body = rows(jobs)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in body])


def headline(jobs: list[JobStatus]) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in STATUS_ORDER}
    optimized = next((j for j in jobs if j.optimized_metric), None)
    goal = (
        f"optimized_metric {optimized.optimized_metric} ({optimized.monitor_mode}); "
        if optimized
        else ""
    )
    text = goal + f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    reused = sum(j.reused for j in jobs)
    if reused:
        text += f" ({reused} ok from an earlier launch, not run again)"
    common = common_overrides(jobs)
    return text + (f"\n\nEvery job: `{' '.join(common)}`" if common else "")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")  # a pipe would end the Markdown cell


def markdown_table(jobs: list[JobStatus]) -> str:
    """The table in Markdown; the overrides column shows what differs between jobs, and the
    ``reused`` column is shown only when a job was kept from an earlier launch."""
    header, body = rows(jobs, drop=common_overrides(jobs))
    if not any(j.reused for j in jobs):
        header, body = header[:-1], [row[:-1] for row in body]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)
