"""The study's report: results.csv (one row a run), results.md, a plot, and TensorBoard.

Every task has its own methods and metrics; the first metric of a task is its headline,
the one the main table and the plot show. A pretrained method runs once from each
pretraining arm (``pretrain.arms.<name>``): the tables' columns and the plot's lines are
``(arm, method)`` pairs, labelled ``simclr finetune`` (the one unnamed arm's, and scratch and
svc, which use no arm: just the method). Each run also records the validation counterpart
of every test metric (``val/acc`` beside ``test/acc``): the study's score for sweepers is a
validation metric, so a sweep never selects on the test split.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptft.files import atomic_path, write_atomic

log = logging.getLogger(__name__)

#: metric names (after ``stage/``) that are rates in [0, 1], shown in %
RATES = ("acc", "f1", "exact_match", "word_f1")
#: metric names (after ``stage/``) where lower is better
LOWER_IS_BETTER = ("loss", "ppl")
#: methods that start from the pretraining checkpoint (the study's return value is theirs)
PRETRAINED_METHODS = ("linear_probe", "finetune", "gradual_unfreeze", "discriminative_lr", "lora")


#: a column of a task's tables (and a line of its plot): ``(arm, method)``, arm "" for
#: scratch, svc and the one unnamed arm
Column = tuple[str, str]


@dataclass
class Result:
    """One run of the study: a task, at a label fraction, with a method (from a pretraining
    arm: "" for scratch, svc and the one unnamed arm) and a seed."""

    task: str
    label_fraction: float
    method: str
    seed: int
    metrics: dict[str, float]
    seconds: float
    # last, with a default: a result.json written before arms existed still loads
    arm: str = ""


def column_label(arm: str, method: str) -> str:
    """``simclr finetune``; just the method for arm "" (scratch, svc, the unnamed arm)."""
    return f"{arm} {method}" if arm else method


@dataclass(frozen=True)
class TaskColumns:
    """What the report shows of a task: its columns (table columns and plot lines, in order),
    each a method (arm "") or an ``(arm, method)`` pair, and its metrics (the first is the
    headline)."""

    methods: Sequence[str | Column]
    metrics: list[str] = field(default_factory=lambda: ["test/acc"])

    @property
    def columns(self) -> list[Column]:
        """The ``(arm, method)`` pairs, in order, each once."""
        return list(dict.fromkeys(m if isinstance(m, tuple) else ("", m) for m in self.methods))

    @property
    def headline(self) -> str:
        return self.metrics[0]

    @property
    def val_metrics(self) -> list[str]:
        """The validation counterpart of each metric (``test/acc`` → ``val/acc``)."""
        return list(dict.fromkeys(val_counterpart(m) for m in self.metrics))

    @property
    def selection(self) -> str:
        """What the study's score for sweepers is read from: the headline's validation
        counterpart."""
        return val_counterpart(self.headline)


def val_counterpart(metric: str) -> str:
    """``test/acc`` → ``val/acc``: the same metric on the validation split. The study reports
    test metrics only (``ptft.study.runner.check`` refuses others)."""
    stage, sep, name = metric.partition("/")
    if stage != "test" or not sep or not name:
        raise ValueError(f"{metric!r} is not a test metric (test/<name>)")
    return f"val/{name}"


def fraction_key(fraction: float) -> float:
    """A label fraction as the report groups it: rounded, so that two runs whose fractions
    differ only in float noise (0.3 and 0.1 + 0.2) share one row, as they share one label."""
    return round(float(fraction), 9)


def is_rate(metric: str) -> bool:
    """Whether a metric is a rate in [0, 1] (acc, f1, word_f1, token_acc …), shown in %."""
    name = metric.rsplit("/", 1)[-1]
    return name in RATES or name.endswith("_acc")


def higher_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] not in LOWER_IS_BETTER


def label(metric: str) -> str:
    return f"{metric} (%)" if is_rate(metric) else metric


def fmt(value: float, metric: str) -> str:
    return f"{100 * value:.1f}" if is_rate(metric) else f"{value:.2f}"


def summarize(
    results: list[Result], metric: str
) -> dict[tuple[str, float, str, str], tuple[float, float, int]]:
    """``(task, fraction, arm, method) → (mean, std, n)`` of ``metric`` over seeds (runs
    without it are left out)."""
    groups: dict[tuple[str, float, str, str], list[float]] = defaultdict(list)
    for r in results:
        if metric in r.metrics:
            key = (r.task, fraction_key(r.label_fraction), r.arm, r.method)
            groups[key].append(r.metrics[metric])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def fractions_of(
    results: list[Result], task: str, columns: list[Column] | None = None
) -> list[float]:
    """The task's label fractions (:func:`fraction_key`), ascending; with ``columns``, only
    those where one of them ran."""
    return sorted(
        {
            fraction_key(r.label_fraction)
            for r in results
            if r.task == task and (columns is None or (r.arm, r.method) in columns)
        }
    )


def table_rows(
    results: list[Result], task: str, columns: list[Column]
) -> list[tuple[float, Column]]:
    """The ``(fraction, (arm, method))`` rows of the task's table of every metric: each pair
    that has a result once, fractions ascending, columns in order."""
    ran = {(fraction_key(r.label_fraction), (r.arm, r.method)) for r in results if r.task == task}
    return [
        (f, c)
        for f in fractions_of(results, task, columns)
        for c in dict.fromkeys(columns)
        if (f, c) in ran
    ]


def headline_table(results: list[Result], task: str, columns: TaskColumns) -> str:
    """Fraction × (arm, method): mean ± std (n) of the task's headline metric."""
    metric = columns.headline
    pairs = columns.columns
    summary = summarize(results, metric)
    lines = [
        "| label fraction | " + " | ".join(column_label(*c) for c in pairs) + " |",
        "| ---: | " + " | ".join("---:" for _ in pairs) + " |",
    ]
    for f in fractions_of(results, task, pairs):
        cells = []
        for arm, m in pairs:
            mean, std, n = summary.get((task, f, arm, m), (math.nan, math.nan, 0))
            cells.append(f"{fmt(mean, metric)} ± {fmt(std, metric)} (n={n})" if n else "–")
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(results: list[Result], task: str, columns: TaskColumns) -> str:
    """Fraction × (arm, method) rows, one column per metric of the task: the mean over seeds."""
    summaries = {metric: summarize(results, metric) for metric in columns.metrics}
    lines = [
        "| label fraction | method | " + " | ".join(label(m) for m in columns.metrics) + " |",
        "| ---: | :--- | " + " | ".join("---:" for _ in columns.metrics) + " |",
    ]
    for f, (arm, method) in table_rows(results, task, columns.columns):
        key = (task, f, arm, method)
        if any(key in s for s in summaries.values()):
            cells = [
                fmt(summaries[m][key][0], m) if key in summaries[m] else "–"
                for m in columns.metrics
            ]
            shown = column_label(arm, method)
            lines.append(f"| {f:g} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(results: list[Result], tasks: Mapping[str, TaskColumns]) -> str:
    """results.md: per task, the headline table and the table of all its metrics."""
    parts = ["# Label efficiency"]
    for task, columns in tasks.items():
        parts += [
            f"## {task}",
            f"{label(columns.headline)} on the test split, mean ± std over seeds (n runs):",
            headline_table(results, task, columns),
            "Every metric, mean over seeds:",
            metrics_table(results, task, columns),
        ]
    return "\n\n".join(parts) + "\n"


def write_csv(results: list[Result], tasks: Mapping[str, TaskColumns], path: Path) -> None:
    """One row a run, one column a metric (of any task: other tasks' columns stay empty): each
    task's test metrics, then their validation counterparts, then anything else recorded.
    ``pretrain`` names the arm a pretrained method started from (empty for scratch and svc,
    and for the one unnamed arm)."""
    metrics = list(
        dict.fromkeys(
            [m for c in tasks.values() for m in (*c.metrics, *c.val_metrics)]
            + [m for r in results for m in r.metrics]
        )
    )
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "task",
                "label_fraction",
                "pretrain",
                "method",
                "seed",
                *metrics,
                "seconds",
            ],
        )
        writer.writeheader()
        for r in results:
            writer.writerow(
                {
                    "task": r.task,
                    "label_fraction": r.label_fraction,
                    "pretrain": r.arm,
                    "method": r.method,
                    "seed": r.seed,
                    **r.metrics,
                    "seconds": r.seconds,
                }
            )


#: line styles of the arms in the plot, in order (a colour names the (arm, method) pair)
ARM_STYLES = ("-", "--", ":", "-.")


def plot(results: list[Result], tasks: Mapping[str, TaskColumns], path: Path) -> Any:
    """One panel per task: its headline metric against the label fraction (log scale), a line
    per (arm, method), or a bar per (arm, method) when the task has a single fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    # an (arm, method) keeps its colour in every panel (past ten, colours come round again:
    # an arm keeps its line style too)
    pairs = list(dict.fromkeys(c for t in tasks.values() for c in t.columns))
    colour = {c: f"C{i % 10}" for i, c in enumerate(pairs)}
    named = list(dict.fromkeys(arm for arm, _ in pairs if arm))
    style = {arm: ARM_STYLES[i % len(ARM_STYLES)] for i, arm in enumerate(named)}
    for ax, (task, columns) in zip(axes[0], tasks.items(), strict=True):
        metric = columns.headline
        scale = 100 if is_rate(metric) else 1
        summary = summarize(results, metric)
        fractions = fractions_of(results, task)
        if len(fractions) > 1:
            for arm, m in columns.columns:
                points = [
                    (f, *summary[(task, f, arm, m)][:2])
                    for f in fractions
                    if (task, f, arm, m) in summary
                ]
                if points:
                    x, mean, std = map(np.array, zip(*points, strict=True))
                    ax.errorbar(
                        x,
                        scale * mean,
                        yerr=scale * std,
                        marker="o",
                        capsize=3,
                        label=column_label(arm, m),
                        color=colour[(arm, m)],
                        linestyle=style.get(arm, "-"),
                    )
            ax.set_xscale("log")
            ax.set_xlabel("fraction of labelled training data")
            ax.legend()
        else:
            bars = [
                ((arm, m), *summary[(task, f, arm, m)][:2])
                for f in fractions
                for arm, m in columns.columns
                if (task, f, arm, m) in summary
            ]
            if bars:
                shown, mean, std = zip(*bars, strict=True)
                ax.bar(
                    [column_label(*c) for c in shown],
                    scale * np.array(mean),
                    yerr=scale * np.array(std),
                    capsize=3,
                    color=[colour[c] for c in shown],
                )
                if any(arm for arm, _ in shown):  # two-word labels: slanted, so they do not meet
                    ax.tick_params(axis="x", labelrotation=30)
            ax.set_xlabel(f"method (label fraction {fractions[0]:g})" if fractions else "method")
        ax.set_ylabel(label(metric))
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def best_pretrained(
    results: list[Result], tasks: Mapping[str, TaskColumns]
) -> tuple[float, Column | None]:
    """:func:`study_score` and the ``(arm, method)`` it was read from (None when none)."""
    task, columns = next(iter(tasks.items()))
    fractions = fractions_of(results, task)
    if not fractions:
        return math.nan, None
    metric = columns.selection
    summary = summarize(results, metric)
    means = {
        (arm, m): mean
        for (t, f, arm, m), (mean, _, _) in summary.items()
        if t == task and f == fractions[0] and m in PRETRAINED_METHODS
    }
    if not means:
        log.warning(
            "no pretrained method of task %s recorded %s at fraction %g: the score for "
            "sweepers is NaN",
            task,
            metric,
            fractions[0],
        )
        return math.nan, None
    pick = max if higher_is_better(metric) else min
    best = pick(means, key=means.__getitem__)
    return means[best], best


def study_score(results: list[Result], tasks: Mapping[str, TaskColumns]) -> float:
    """For sweepers: the validation counterpart of the first task's headline
    (:attr:`TaskColumns.selection`, e.g. ``val/acc``), mean over seeds, of the pretrained
    (arm, method) best on it at the task's smallest label fraction; never a test metric, so a
    sweep does not select on the test split. NaN when no pretrained method recorded it."""
    return best_pretrained(results, tasks)[0]


def write_report(results: list[Result], out: Path, tasks: Mapping[str, TaskColumns]) -> float:
    """Write results.csv, results.md (each whole or not at all), label_efficiency.png and
    TensorBoard; return :func:`study_score`."""
    write_csv(results, tasks, out / "results.csv")
    report = markdown_report(results, tasks)
    write_atomic(out / "results.md", report)
    fig = plot(results, tasks, out / "label_efficiency.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_text("pipeline/results", report)
        writer.add_figure("pipeline/label_efficiency", fig)
    log.info("results:\n%s", report)
    score, best = best_pretrained(results, tasks)
    first, columns = next(iter(tasks.items()))
    log.info(
        "score for sweepers (the value ptft-pipeline returns): %s of task %s's best pretrained "
        "method at its smallest label fraction%s = %.4g",
        columns.selection,
        first,
        f" ({column_label(*best)})" if best else "",
        score,
    )
    return score
