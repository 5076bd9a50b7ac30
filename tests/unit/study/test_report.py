"""The study's report on a small made-up results table: one row per (fraction, method) in the
table of every metric, validation columns in results.csv, and a score for sweepers read from
validation metrics only."""

from __future__ import annotations

import csv
import math

import pytest

from ptft.study.report import (
    Result,
    TaskColumns,
    markdown_report,
    study_score,
    val_counterpart,
    write_csv,
)

METHODS = ["scratch", "finetune", "discriminative_lr"]


def rows_after(report: str, header: str) -> list[list[str]]:
    """The cells of every row of the markdown table that starts with ``header``."""
    lines = report[report.index(header) :].splitlines()[2:]
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table


def small_table() -> list[Result]:
    """Two fractions, two seeds at 0.1 and one at 1.0, every method; one run of a fraction
    written as float noise (0.1 + 0.2 for 0.3) and a method the columns do not show."""
    results = []
    for fraction, seeds in [(0.1, 2), (1.0, 1)]:
        for seed in range(seeds):
            for i, method in enumerate(METHODS):
                acc = 0.5 + 0.1 * i + 0.01 * seed + (0.2 if fraction == 1.0 else 0.0)
                metrics = {"test/acc": acc, "test/f1": acc - 0.05, "val/acc": acc + 0.02}
                results.append(Result("cls", fraction, method, seed, metrics, 1.0))
    results.append(Result("cls", 0.3, "scratch", 0, {"test/acc": 0.4, "test/f1": 0.3}, 1.0))
    results.append(Result("cls", 0.1 + 0.2, "scratch", 1, {"test/acc": 0.6, "test/f1": 0.5}, 1.0))
    results.append(Result("cls", 0.3, "svc", 0, {"test/acc": 0.9, "test/f1": 0.9}, 1.0))
    return results


def test_the_table_of_every_metric_has_one_row_per_fraction_and_method():
    results = small_table()
    # the methods listed twice (as a hand-written config might): still one row each
    columns = {"cls": TaskColumns([*METHODS, "discriminative_lr"], ["test/acc", "test/f1"])}
    report = markdown_report(results, columns)
    rows = rows_after(report, "| label fraction | method | test/acc (%) | test/f1 (%) |")
    keys = [(cells[0], cells[1]) for cells in rows]
    # independently: the (fraction, method) pairs that ran, for the columns' methods, in
    # ascending fraction then column order; 0.1 + 0.2 is the label fraction 0.3
    expected = [("0.1", m) for m in METHODS] + [("0.3", "scratch")] + [("1", m) for m in METHODS]
    assert keys == expected
    assert len(set(keys)) == len(keys)
    # the 0.3 row is the mean of both of its runs: (0.4 + 0.6) / 2 and (0.3 + 0.5) / 2
    assert rows[3][2:] == ["50.0", "40.0"]
    # and the last row is discriminative_lr at fraction 1, once
    assert rows[-1][:3] == ["1", "discriminative_lr", f"{100 * (0.5 + 0.2 + 0.2):.1f}"]
    headline = rows_after(report, "| label fraction | scratch | finetune | discriminative_lr |")
    assert [cells[0] for cells in headline] == ["0.1", "0.3", "1"]
    assert headline[1][1:] == ["50.0 ± 10.0 (n=2)", "–", "–"]


def test_csv_carries_validation_counterparts_beside_test_metrics(tmp_path):
    results = small_table()
    columns = {"cls": TaskColumns(METHODS, ["test/acc", "test/f1"])}
    write_csv(results, columns, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "task",
        "label_fraction",
        "pretrain",
        "method",
        "seed",
        "test/acc",
        "test/f1",
        "val/acc",
        "val/f1",
        "seconds",
    ]
    assert float(rows[0]["val/acc"]) == pytest.approx(results[0].metrics["val/acc"])
    assert rows[0]["val/f1"] == ""  # not recorded: left empty, never filled from test
    assert {r["pretrain"] for r in rows} == {""}  # no named arm: the column stays empty


def test_val_counterpart_and_a_metric_without_one():
    assert val_counterpart("test/acc") == "val/acc"
    assert val_counterpart("test/exact_match") == "val/exact_match"
    assert TaskColumns(METHODS, ["test/ppl", "test/acc"]).selection == "val/ppl"
    with pytest.raises(ValueError, match="not a test metric"):
        val_counterpart("train/loss")


def test_score_for_sweepers_is_read_from_validation_never_test():
    # at fraction 0.1 finetune is best on test, linear_probe on validation: the score follows
    # validation, and is the validation mean itself
    runs = {
        "finetune": [(0.90, 0.70), (0.92, 0.72)],  # (test/acc, val/acc) per seed
        "linear_probe": [(0.80, 0.85), (0.82, 0.83)],
        "scratch": [(0.99, 0.99), (0.99, 0.99)],  # not pretrained: never the score
    }
    results = [
        Result("cls", 0.1, method, seed, {"test/acc": t, "val/acc": v}, 1.0)
        for method, pairs in runs.items()
        for seed, (t, v) in enumerate(pairs)
    ]
    results.append(Result("cls", 1.0, "finetune", 0, {"test/acc": 1.0, "val/acc": 1.0}, 1.0))
    columns = {"cls": TaskColumns(["scratch", "linear_probe", "finetune"], ["test/acc"])}
    assert study_score(results, columns) == pytest.approx((0.85 + 0.83) / 2)
    # a lower-is-better headline (perplexity) takes the lowest validation mean
    ppl = [
        Result("gen", 1.0, "finetune", 0, {"test/ppl": 10.0, "val/ppl": 30.0}, 1.0),
        Result("gen", 1.0, "linear_probe", 0, {"test/ppl": 20.0, "val/ppl": 25.0}, 1.0),
    ]
    assert study_score(ppl, {"gen": TaskColumns(["finetune"], ["test/ppl"])}) == 25.0
    # no validation recorded: NaN, not the test value
    no_val = [Result("cls", 0.1, "finetune", 0, {"test/acc": 0.9}, 1.0)]
    assert math.isnan(study_score(no_val, columns))
