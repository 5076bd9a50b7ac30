"""The study's report: results.csv (one row a run), results.md, a plot, and TensorBoard."""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Result:
    label_fraction: float
    method: str
    seed: int
    test_acc: float
    test_f1: float
    seconds: float


def summarize(results: list[Result]) -> dict[tuple[float, str], tuple[float, float, int]]:
    """``(fraction, method) → (mean, std, n)`` of the test accuracy over seeds."""
    groups: dict[tuple[float, str], list[float]] = defaultdict(list)
    for r in results:
        groups[(r.label_fraction, r.method)].append(r.test_acc)
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def markdown_table(results: list[Result], methods: list[str]) -> str:
    summary = summarize(results)
    fractions = sorted({r.label_fraction for r in results})
    lines = [
        "| label fraction | " + " | ".join(methods) + " |",
        "| ---: | " + " | ".join("---:" for _ in methods) + " |",
    ]
    for f in fractions:
        cells = []
        for m in methods:
            mean, std, n = summary.get((f, m), (math.nan, math.nan, 0))
            cells.append(f"{100 * mean:.1f} ± {100 * std:.1f} (n={n})" if n else "–")
        lines.append(f"| {f:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[Result], methods: list[str], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    fractions = sorted({r.label_fraction for r in results})
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        points = [(f, *summary[(f, m)][:2]) for f in fractions if (f, m) in summary]
        if points:
            x, mean, std = map(np.array, zip(*points, strict=True))
            ax.errorbar(x, 100 * mean, yerr=100 * std, marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of labelled training data")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("label efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def write_report(results: list[Result], out: Path, methods: list[str]) -> float:
    """Write the report files; return the best pretrained method's accuracy at the smallest fraction."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    table = markdown_table(results, list(methods))
    (out / "results.md").write_text(
        "# Label efficiency: test accuracy (%), mean ± std over seeds\n\n" + table + "\n"
    )
    fig = plot(results, list(methods), out / "label_efficiency.png")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_text("pipeline/results", table)
        writer.add_figure("pipeline/label_efficiency", fig)
    log.info("results (test accuracy %%, mean ± std over seeds):\n%s", table)

    summary = summarize(results)
    smallest = min(r.label_fraction for r in results)
    pretrained = [summary[(smallest, m)][0] for m in ("linear_probe", "finetune") if (smallest, m) in summary]
    return max(pretrained) if pretrained else math.nan
