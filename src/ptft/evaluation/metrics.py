"""A classifier's test report from its predictions: torchmetrics scores and a confusion matrix plot.

``ptft-eval`` computes it from the predictions it saves, so every number in
``metrics.json`` can be recomputed from ``predictions.csv`` with any other tool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def class_names(num_classes: int, names: Sequence[str] | None) -> list[str]:
    """The data's class names when they fit, else the class indices as text."""
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def classification_report(
    target: Tensor, predicted: Tensor, num_classes: int, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Scalars (``test/acc``, macro ``test/precision``, ``test/recall``, ``test/f1``), per-class
    precision, recall, F1 and support keyed by class name, and the confusion matrix
    (rows: true class, columns: predicted class)."""
    names = class_names(num_classes, names)
    args = (predicted, target, num_classes)
    per_class = {
        "precision": multiclass_precision(*args, average=None),
        "recall": multiclass_recall(*args, average=None),
        "f1": multiclass_f1_score(*args, average=None),
    }
    support = torch.bincount(target, minlength=num_classes)
    scalars = {
        "test/acc": multiclass_accuracy(*args, average="micro"),
        "test/precision": multiclass_precision(*args, average="macro"),
        "test/recall": multiclass_recall(*args, average="macro"),
        "test/f1": multiclass_f1_score(*args, average="macro"),
    }
    return {
        "metrics": {k: float(v) for k, v in scalars.items()},
        "per_class": {
            name: {**{k: float(v[i]) for k, v in per_class.items()}, "support": int(support[i])}
            for i, name in enumerate(names)
        },
        "confusion_matrix": multiclass_confusion_matrix(predicted, target, num_classes).tolist(),
        "labels": names,
    }


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> Any:
    """A matplotlib figure of the confusion matrix, counts written in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = torch.as_tensor(matrix)
    n = len(names)
    size = max(4.0, 0.45 * n + 2.0)
    figure = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(figure)  # drawn into memory by Agg, never in a window (no pyplot)
    axes = figure.add_subplot()
    image = axes.imshow(counts.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    axes.set_xticks(range(n), names, rotation=90 if n > 10 or max(map(len, names)) > 3 else 0)
    axes.set_yticks(range(n), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    threshold = counts.max().item() / 2
    if n <= 30:  # beyond that, the numbers would not be legible
        for (row, col), value in zip(
            torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(),
            counts.flatten().tolist(),
            strict=True,
        ):
            axes.text(
                col,
                row,
                str(value),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > threshold else "black",
            )
    axes.set_title(f"confusion matrix ({int(counts.sum())} test examples)")
    return figure
