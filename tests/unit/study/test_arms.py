"""Pretraining arms of a study (``pretrain.arms.<name>``): the runs a plan holds with two arms
and a task restricted to one, the directories they write, the report's ``pretrain`` column,
columns and score with arm results (made up here, compared with values worked out by hand),
and the one-line errors of a bad ``pretrain``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ptft.cli import config_dir, run_config_error
from ptft.config.schemas import PipelineConfig
from ptft.errors import ConfigError
from ptft.study import runner
from ptft.study.report import (
    Result,
    TaskColumns,
    best_pretrained,
    markdown_report,
    plot,
    study_score,
    write_csv,
)
from ptft.study.runner import Arm, Run

CHECK = "ptft.study.runner.check"


def study(pretrain: dict, tasks: dict, pretrained: str | None = None) -> DictConfig:
    """A study's config as ``pipeline.yaml``'s schema types it (no Hydra, no yaml)."""
    return OmegaConf.merge(
        OmegaConf.structured(PipelineConfig),
        {"pretrain": pretrain, "tasks": tasks, "pretrained": pretrained},
    )


#: two arms, gpt and bert; cls runs from both, gen only from gpt
TWO_ARMS = {"arms": {"gpt": {"overrides": ["experiment=pydoc_gpt"]}, "bert": {"overrides": []}}}
TASKS = {
    "cls": {
        "methods": ["scratch", "linear_probe", "finetune"],
        "label_fractions": [0.1, 1.0],
        "seeds": 1,
        "small_fraction": 0.2,
        "small_fraction_seeds": 2,
    },
    "gen": {"methods": ["scratch", "finetune"], "label_fractions": [1.0], "arms": ["gpt"]},
}


# ----------------------------------------------------------------------------- the plan
def test_two_arms_run_every_pretrained_method_once_each_and_a_task_only_from_its_own():
    runs = list(runner.plan(study(TWO_ARMS, TASKS)))
    # written out: task, fraction, seed, then methods as listed, a pretrained one from each
    # arm in the arms' order; scratch uses no arm
    per_seed = [
        ("scratch", ""),
        ("linear_probe", "gpt"),
        ("linear_probe", "bert"),
        ("finetune", "gpt"),
        ("finetune", "bert"),
    ]
    expected = [
        *(Run("cls", 0.1, m, 0, a) for m, a in per_seed),
        *(Run("cls", 0.1, m, 1, a) for m, a in per_seed),  # 0.1 <= small_fraction: 2 seeds
        *(Run("cls", 1.0, m, 0, a) for m, a in per_seed),
        Run("gen", 1.0, "scratch", 0, ""),
        Run("gen", 1.0, "finetune", 0, "gpt"),
    ]
    assert runs == expected
    assert len(set(runs)) == len(runs) == 17


def test_an_arm_may_run_only_some_methods():
    arms = {"arms": {**TWO_ARMS["arms"], "bert": {"methods": ["linear_probe"]}}}
    runs = [(r.arm, r.method) for r in runner.plan(study(arms, TASKS)) if r.fraction == 1.0]
    assert runs == [
        ("", "scratch"),
        ("gpt", "linear_probe"),
        ("bert", "linear_probe"),
        ("gpt", "finetune"),
        ("", "scratch"),
        ("gpt", "finetune"),
    ]


def test_an_arms_method_overrides_follow_the_tasks_on_its_own_runs_only():
    arms = {"arms": {**TWO_ARMS["arms"], "gpt": {"method_overrides": {"finetune": ["lr=1"]}}}}
    tasks = {"cls": {**TASKS["cls"], "method_overrides": {"finetune": ["lr=3"], "scratch": ["a"]}}}
    cfg = study(arms, tasks)

    def tail(arm: str, method: str) -> list[str]:
        overrides = runner.run_overrides(cfg, Run("cls", 0.1, method, 0, arm), None, Path("x"))
        where = [o.startswith("paths.output_dir=") for o in overrides].index(True)
        return overrides[where + 1 :]

    # the task's method overrides, then the arm's: the later value wins when Hydra composes
    assert tail("gpt", "finetune") == ["lr=3", "lr=1"]
    assert tail("bert", "finetune") == ["lr=3"]
    assert tail("gpt", "linear_probe") == []
    assert tail("", "scratch") == ["a"]


def test_the_shipped_text_study_finetunes_the_contrastive_arm_at_its_own_rate():
    text = compose_study(["pipeline=text"])
    rates = {}
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for arm in ("bert", "contrastive"):
            run = Run("package", 0.1, "finetune", 0, arm)
            overrides = runner.run_overrides(text, run, Path("ckpt"), Path("out"))
            rates[arm] = runner.compose_train(overrides, "test").model.optimizer.lr
    assert rates == {"bert": 3.0e-3, "contrastive": 1.0e-3}


def test_the_one_arm_form_plans_and_writes_as_before_arms():
    cfg = study({"overrides": ["experiment=digits_simclr"]}, {"cls": TASKS["cls"]})
    assert runner.arms(cfg) == {"": Arm("", ("experiment=digits_simclr",))}
    runs = list(runner.plan(cfg))
    assert {r.arm for r in runs} == {""}
    assert [r.method for r in runs[:3]] == ["scratch", "linear_probe", "finetune"]
    assert len(runs) == 3 * 3


def test_directories_name_the_arm_only_when_it_has_a_name(tmp_path):
    assert Run("cls", 0.1, "finetune", 2, "gpt").directory(tmp_path) == (
        tmp_path / "finetune" / "cls" / "fraction_0.1" / "gpt-finetune" / "seed_2"
    )
    assert Run("cls", 0.1, "finetune", 2).directory(tmp_path) == (
        tmp_path / "finetune" / "cls" / "fraction_0.1" / "finetune" / "seed_2"
    )
    assert Arm("gpt").directory(tmp_path) == tmp_path / "pretrain" / "gpt"
    assert Arm("").directory(tmp_path) == tmp_path / "pretrain"


def compose_study(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="pipeline", overrides=overrides)


def test_the_shipped_studies_compare_two_objectives():
    vision = compose_study([])
    assert list(runner.arms(vision)) == ["simclr", "autoencoder"]
    runs = list(runner.plan(vision))
    # 5 seeds at fraction 0.01, 3 at 0.05, 0.1 and 1.0: 14; each with scratch, svc, the four
    # pretrained methods from simclr and linear_probe and finetune from the autoencoder
    assert len(runs) == 14 * (2 + 4 + 2)
    assert {(r.arm, r.method) for r in runs if r.arm == "autoencoder"} == {
        ("autoencoder", "linear_probe"),
        ("autoencoder", "finetune"),
    }
    text = compose_study(["pipeline=text"])
    assert list(runner.arms(text)) == ["gpt", "bert", "contrastive"]
    runs = list(runner.plan(text))
    # package: 3 fractions x 3 seeds x (scratch + finetune from bert and from contrastive);
    # names: 2 fractions x 3 seeds x (scratch + gpt finetune)
    assert len(runs) == 3 * 3 * 3 + 2 * 3 * 2
    assert {(r.arm, r.method) for r in runs if r.task == "package"} == {
        ("", "scratch"),
        ("bert", "finetune"),
        ("contrastive", "finetune"),
    }
    assert {(r.arm, r.method) for r in runs if r.task == "names"} == {
        ("", "scratch"),
        ("gpt", "finetune"),
    }


# ---------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize(
    ("pretrain", "tasks", "pretrained", "message"),
    [
        (
            {**TWO_ARMS, "overrides": ["experiment=digits_simclr"]},
            TASKS,
            None,
            "pretrain.overrides and pretrain.arms (gpt, bert) are both set; pick one: "
            "pretrain.arms=null for the one-arm form",
        ),
        (
            TWO_ARMS,
            TASKS,
            ".",
            "pretrained=. reuses the one unnamed arm's checkpoint, but the study has named arms "
            "(gpt, bert); reuse an arm's as pretrain.arms.<name>.pretrained=",
        ),
        (
            TWO_ARMS,
            {**TASKS, "gen": {**TASKS["gen"], "arms": ["gpt", "t5"]}},
            None,
            "tasks.gen.arms: ['t5'] are not arms of the study; its arms are ['gpt', 'bert']",
        ),
        (
            {"overrides": ["experiment=pydoc_gpt"]},
            TASKS,
            None,
            "tasks.gen.arms: ['gpt'] are not arms of the study; it has none named (the one-arm "
            "form, pretrain.overrides): set tasks.gen.arms=null",
        ),
        (
            {"arms": {"gpt": {"methods": ["scratch"]}}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms.gpt.methods: ['scratch'] are not pretrained methods",
        ),
        (
            {"arms": {"gpt": {"method_overrides": {"scratch": ["model.optimizer.lr=1"]}}}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms.gpt.method_overrides: ['scratch'] are not pretrained methods",
        ),
        (
            {"arms": {"gpt": {"overides": ["experiment=pydoc_gpt"]}}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms.gpt.overides: Key 'overides' not in 'PretrainArm'; an arm takes "
            "['overrides', 'pretrained', 'methods', 'method_overrides']",
        ),
        (
            {"arms": {"gpt": {"pretrained": "no/such/run"}}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms.gpt.pretrained=no/such/run: no such file or directory",
        ),
        (
            {"arms": {"my gpt": {}}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms: 'my gpt' is not an arm name",
        ),
        (
            {"arms": {"gpt": 5}},
            {"cls": TASKS["cls"]},
            None,
            "pretrain.arms.gpt=5: an arm is a mapping",
        ),
    ],
)
def test_a_bad_pretrain_is_refused_in_one_line(pretrain, tasks, pretrained, message):
    with pytest.raises(ConfigError) as err:
        runner.check_arms(study(pretrain, tasks, pretrained))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_the_command_line_says_how_to_pick_one_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = run_config_error("pipeline", ['pretrain.overrides=["experiment=digits_simclr"]'], CHECK)
    assert error == (
        "pretrain.overrides and pretrain.arms (simclr, autoencoder) are both set; pick one: "
        "pretrain.arms=null for the one-arm form (pretrain.overrides), or each arm's overrides "
        "as pretrain.arms.<name>.overrides"
    )
    # an optional group's unknown option is not taken silently inside an arm's overrides
    error = run_config_error(
        "pipeline",
        [
            "tasks.digits.methods=[linear_probe]",
            '+pretrain.arms.rotation.overrides=["experiment=digits_rotation"]',
        ],
        CHECK,
    )
    assert error is not None and error.startswith(
        "pretrain.arms.rotation.overrides: experiment=digits_rotation: experiment has no "
        "option 'digits_rotation'"
    )
    assert not (tmp_path / "outputs").exists()


def test_a_dropped_arm_and_a_reused_checkpoint(tmp_path):
    cfg = compose_study(
        ["pipeline=text", "~pretrain.arms.bert", "tasks.package.arms=[contrastive]"]
    )
    assert list(runner.arms(cfg)) == ["gpt", "contrastive"]
    reused = compose_study(["pipeline=text", f"pretrain.arms.bert.pretrained='{tmp_path}'"])
    assert runner.arms(reused)["bert"].pretrained == str(tmp_path)
    runner.check_arms(reused)


# ------------------------------------------------------------------------------ report
def arm_results() -> list[Result]:
    """One task at fractions 0.1 (two seeds) and 1.0 (one): scratch, linear_probe from gpt and
    from bert, finetune from gpt. At 0.1, gpt finetune is best on test and bert linear_probe
    on validation."""
    table = {
        # (fraction, arm, method): [(test/acc, val/acc) per seed]
        (0.1, "", "scratch"): [(0.40, 0.41), (0.50, 0.45)],
        (0.1, "gpt", "linear_probe"): [(0.60, 0.62), (0.70, 0.64)],
        (0.1, "bert", "linear_probe"): [(0.62, 0.80), (0.64, 0.82)],
        (0.1, "gpt", "finetune"): [(0.90, 0.70), (0.80, 0.72)],
        (1.0, "", "scratch"): [(0.95, 0.95)],
        (1.0, "gpt", "linear_probe"): [(0.96, 0.96)],
        (1.0, "bert", "linear_probe"): [(0.97, 0.97)],
        (1.0, "gpt", "finetune"): [(0.99, 0.99)],
    }
    return [
        Result("cls", f, m, seed, {"test/acc": t, "val/acc": v}, 1.0, arm=a)
        for (f, a, m), runs in table.items()
        for seed, (t, v) in enumerate(runs)
    ]


COLUMNS = {
    "cls": TaskColumns(
        [("", "scratch"), ("gpt", "linear_probe"), ("bert", "linear_probe"), ("gpt", "finetune")],
        ["test/acc"],
    )
}


def test_csv_has_the_arm_of_every_run(tmp_path):
    write_csv(arm_results(), COLUMNS, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["task", "label_fraction", "pretrain", "method", "seed"]
    assert [(r["pretrain"], r["method"]) for r in rows[:4]] == [
        ("", "scratch"),
        ("", "scratch"),
        ("gpt", "linear_probe"),
        ("gpt", "linear_probe"),
    ]
    assert sum(r["pretrain"] == "bert" for r in rows) == 3


def test_table_has_a_column_per_arm_and_method():
    report = markdown_report(arm_results(), COLUMNS)
    header = "| label fraction | scratch | gpt linear_probe | bert linear_probe | gpt finetune |"
    assert header in report
    first = report[report.index(header) :].splitlines()[2]
    # means and (population) stds over the two seeds, by hand, in %
    assert first == (
        "| 0.1 | 45.0 ± 5.0 (n=2) | 65.0 ± 5.0 (n=2) | 63.0 ± 1.0 (n=2) | 85.0 ± 5.0 (n=2) |"
    )
    assert "| 0.1 | bert linear_probe | 63.0 |" in report
    assert "| 1 | gpt finetune | 99.0 |" in report


def test_score_is_the_best_arm_and_method_on_validation():
    # at 0.1: bert linear_probe (0.80 + 0.82) / 2 on validation beats gpt finetune, best on test
    assert best_pretrained(arm_results(), COLUMNS) == (
        pytest.approx(0.81),
        ("bert", "linear_probe"),
    )
    assert study_score(arm_results(), COLUMNS) == pytest.approx(0.81)


def test_the_plot_keeps_one_colour_per_arm_and_method(tmp_path):
    single = [r for r in arm_results() if r.label_fraction == 1.0]
    results = arm_results() + [
        Result("one", r.label_fraction, r.method, r.seed, r.metrics, 1.0, r.arm) for r in single
    ]
    columns = {"cls": COLUMNS["cls"], "one": COLUMNS["cls"]}
    fig = plot(results, columns, tmp_path / "plot.png")
    lines, bars = fig.axes
    labels = lines.get_legend_handles_labels()[1]
    assert labels == ["scratch", "gpt linear_probe", "bert linear_probe", "gpt finetune"]
    line_colours = [c.lines[0].get_color() for c in lines.containers]
    assert len(set(line_colours)) == 4
    # the bar panel (a single fraction): the same pairs, in the same colours
    assert [t.get_text() for t in bars.get_xticklabels()] == labels
    from matplotlib.colors import to_hex

    assert [to_hex(p.get_facecolor()) for p in bars.patches] == [to_hex(c) for c in line_colours]


def test_a_result_recorded_before_arms_still_loads(tmp_path):
    record = {
        "task": "cls",
        "label_fraction": 0.1,
        "method": "finetune",
        "seed": 0,
        "metrics": {"test/acc": 0.9},
        "seconds": 1.0,
    }
    run = Run("cls", 0.1, "finetune", 0)
    run.directory(tmp_path).mkdir(parents=True)
    (run.directory(tmp_path) / runner.RESULT_FILE).write_text(json.dumps(record))
    cfg = study({}, {"cls": {"metrics": ["test/acc"]}})
    assert runner.recorded(cfg, run, tmp_path) == Result(**record, arm="")
    # the same run from a named arm is another run
    gpt = Run("cls", 0.1, "finetune", 0, "gpt")
    gpt.directory(tmp_path).mkdir(parents=True)
    (gpt.directory(tmp_path) / runner.RESULT_FILE).write_text(json.dumps(record))
    assert runner.recorded(cfg, gpt, tmp_path) is None
    assert runner.recorded(cfg, gpt, Path(tmp_path / "nowhere")) is None
