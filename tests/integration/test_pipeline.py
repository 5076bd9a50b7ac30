"""ptft-pipeline: the vision study (its one-arm form) and the text study (two pretraining
arms) end to end on a tiny budget, the checks made before pretraining, and the report's
numbers against an independent computation."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from sklearn.metrics import f1_score
from sklearn.svm import SVC

from ptft.cli import config_dir
from ptft.data.digits import DigitsDataModule
from ptft.errors import ConfigError
from ptft.study.report import Result, TaskColumns, markdown_report, study_score, write_csv
from ptft.study.runner import check
from tests.helpers import run_cli

#: quiet pretraining runs: the study's own fine-tuning runs are quiet already
QUIET_PRETRAIN = [
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def hydra_list(items: list[str]) -> str:
    """A list of strings as a Hydra override value (each quoted: they hold ``=``)."""
    return "[" + ",".join(json.dumps(item) for item in items) + "]"


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------- vision study
@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pipeline")
    result = run_cli(
        [
            "ptft.pipeline",
            "tasks.digits.label_fractions=[0.02,0.1]",
            "tasks.digits.seeds=1",
            "tasks.digits.small_fraction=0.05",
            "tasks.digits.small_fraction_seeds=2",
            # the one-arm form, as before arms: pretrain/, finetune/…/<method>/, no arm in labels
            "pretrain.arms=null",
            "pretrain.overrides="
            + hydra_list(
                [
                    "experiment=digits_simclr",
                    "trainer.max_epochs=1",
                    "trainer.check_val_every_n_epoch=1",
                    *QUIET_PRETRAIN,
                ]
            ),
            "tasks.digits.overrides="
            + hydra_list(
                [
                    "experiment=digits_classifier",
                    "trainer.max_steps=6",
                    "trainer.val_check_interval=3",
                ]
            ),
            "hydra.run.dir=run",
        ],
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return cwd / "run"


def test_results_csv_has_one_row_per_fraction_method_and_seed(pipeline_run):
    rows = csv_rows(pipeline_run)
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
    keys = sorted(
        (r["task"], float(r["label_fraction"]), r["method"], int(r["seed"])) for r in rows
    )
    methods = [
        "discriminative_lr",
        "finetune",
        "gradual_unfreeze",
        "linear_probe",
        "scratch",
        "svc",
    ]
    expected = sorted(
        [("digits", 0.02, m, s) for m in methods for s in (0, 1)]
        + [("digits", 0.1, m, 0) for m in methods]
    )
    assert keys == expected
    # every run validated on its last step: its validation metrics are recorded beside the test's
    assert all(0.0 <= float(r[m]) <= 1.0 for r in rows for m in ("test/acc", "val/acc", "val/f1"))
    assert {r["pretrain"] for r in rows} == {""}  # the one unnamed arm


def test_the_log_counts_every_run_and_says_the_time_left(pipeline_run):
    lines = (pipeline_run / "pipeline.log").read_text().splitlines()
    runs = [line for line in lines if re.search(r"\]\[ptft.study.runner\]\[INFO\] - \[\d+/", line)]
    # 2 seeds x 6 methods at fraction 0.02, 1 x 6 at 0.1: counted 1 to 18, in order, once each
    counts = [re.search(r"- \[(\d+)/(\d+)\] ", line).groups() for line in runs]
    assert counts == [(str(k), "18") for k in range(1, 19)]
    for line in runs[:-1]:
        assert re.search(r"; elapsed \d+:\d\d, ~\d+ (s|min) left$", line), line
    assert re.search(r"; elapsed \d+:\d\d, all runs done$", runs[-1]), runs[-1]
    assert "[18/18] digits fraction 0.1   svc" in runs[-1]


def test_svc_baseline_uses_the_same_labelled_subsets(pipeline_run):
    rows = [r for r in csv_rows(pipeline_run) if r["method"] == "svc"]
    for r in rows:
        dm = DigitsDataModule(label_fraction=float(r["label_fraction"]), subset_seed=int(r["seed"]))
        dm.setup("fit")
        (x, y) = dm.splits["train"]
        svc = SVC(C=10.0, gamma="scale").fit(x.flatten(1), y)  # the pipeline's default baseline
        for split in ("test", "val"):
            xs, ys = dm.splits[split]
            predicted = svc.predict(xs.flatten(1))
            assert float(r[f"{split}/acc"]) == pytest.approx(
                np.mean(predicted == ys.numpy()), abs=1e-9
            )
            assert float(r[f"{split}/f1"]) == pytest.approx(
                f1_score(ys, predicted, average="macro"), abs=1e-9
            )


def test_markdown_table_plot_and_tensorboard(pipeline_run):
    rows = csv_rows(pipeline_run)
    table = (pipeline_run / "results.md").read_text()
    assert (
        "| label fraction | scratch | linear_probe | finetune | gradual_unfreeze "
        "| discriminative_lr | svc |" in table
    )
    accs = [
        float(r["test/acc"])
        for r in rows
        if r["method"] == "scratch" and r["label_fraction"] == "0.02"
    ]
    assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} (n=2)" in table
    assert (pipeline_run / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (pipeline_run / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    events = list(pipeline_run.rglob("events.out.tfevents.*"))
    # the pretraining, every fine-tuning run, and the summary all log under the one run directory
    assert len({e.parent for e in events}) >= 1 + 15 + 1
    # fine-tuning runs inside the study write no checkpoints
    assert not list((pipeline_run / "finetune").rglob("*.ckpt"))


# --------------------------------------------------------------------- text study
#: task → its (arm, method) columns and label fractions: package from both arms (bert runs
#: only linear_probe and finetune here, to keep the fixture's time), names from gpt only
TEXT_TASKS = {
    "package": (
        [
            ("", "scratch"),
            ("gpt", "linear_probe"),
            ("bert", "linear_probe"),
            ("gpt", "finetune"),
            ("bert", "finetune"),
            ("contrastive", "finetune"),
            ("gpt", "gradual_unfreeze"),
            ("gpt", "discriminative_lr"),
        ],
        [0.1, 1.0],
    ),
    "names": ([("", "scratch"), ("gpt", "finetune")], [1.0]),
}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """``pipeline=text`` with its three arms made tiny (a GPT, a BERT, a span-contrastive
    encoder), a 512-token vocabulary, one seed and a few steps per run."""
    cwd = tmp_path_factory.mktemp("pipeline_text")
    tiny = [
        f"data.cache_dir={cwd / 'pydoc'}",
        "data.vocab_size=512",
        "data.batch_size=16",
        "data.eval_batch_size=128",
        "model.backbone.dim=32",
        "model.backbone.num_layers=1",
        "model.backbone.num_heads=2",
        "model.backbone.max_positions=64",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=2",
        "logger=none",
    ]
    result = run_cli(
        [
            "ptft.pipeline",
            "pipeline=text",
            *(
                f"pretrain.arms.{arm}.overrides="
                + hydra_list(
                    [
                        f"experiment=pydoc_{arm}",
                        *tiny,
                        "data.block_size=32",
                        "trainer.max_epochs=1",
                        *QUIET_PRETRAIN,
                    ]
                )
                for arm in ("gpt", "bert", "contrastive")
            ),
            "pretrain.arms.bert.methods=[linear_probe,finetune]",
            "pretrain.arms.contrastive.methods=[finetune]",
            "tasks.package.arms=[gpt,bert,contrastive]",
            "tasks.package.methods=[scratch,linear_probe,finetune,gradual_unfreeze,discriminative_lr]",
            "tasks.package.label_fractions=[0.1,1.0]",
            "tasks.package.seeds=1",
            "tasks.names.label_fractions=[1.0]",
            "tasks.names.seeds=1",
            "tasks.package.overrides="
            + hydra_list(["experiment=pydoc_package_classifier", *tiny, "data.max_length=32"]),
            "tasks.names.overrides="
            + hydra_list(
                [
                    "experiment=pydoc_name_generator",
                    *tiny,
                    "data.max_length=32",
                    "model.max_new_tokens=4",
                ]
            ),
            "hydra.run.dir=run",
        ],
        cwd=cwd,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return cwd / "run"


def test_text_study_runs_every_task_fraction_arm_method_and_seed(text_run):
    rows = csv_rows(text_run)
    assert list(rows[0])[:5] == ["task", "label_fraction", "pretrain", "method", "seed"]
    keys = sorted(
        (r["task"], float(r["label_fraction"]), r["pretrain"], r["method"], int(r["seed"]))
        for r in rows
    )
    expected = sorted(
        (t, f, arm, m, 0)
        for t, (columns, fractions) in TEXT_TASKS.items()
        for f in fractions
        for arm, m in columns
    )
    assert keys == expected
    assert {r["pretrain"] for r in rows} == {"", "gpt", "bert", "contrastive"}
    for r in rows:
        if r["task"] == "package":
            for stage in ("test", "val"):
                assert 0.0 <= float(r[f"{stage}/acc"]) <= 1.0
                assert 0.0 <= float(r[f"{stage}/f1"]) <= 1.0
            assert r["test/exact_match"] == r["test/ppl"] == ""  # the other task's columns
        else:
            for stage in ("test", "val"):
                assert (
                    0.0 <= float(r[f"{stage}/exact_match"]) <= 1.0
                    and 0.0 <= float(r[f"{stage}/token_acc"]) <= 1.0
                )
                assert float(r[f"{stage}/ppl"]) >= 1.0
            assert r["test/acc"] == r["test/f1"] == ""


def test_text_fine_tunes_start_from_the_pretraining_checkpoint(text_run):
    """Each arm's runs start from that arm's checkpoint, with its tokenizer."""
    ckpts, tokenizers = {}, {}
    for arm in ("gpt", "bert", "contrastive"):
        ckpts[arm] = text_run / "pretrain" / arm / "checkpoints" / "last.ckpt"
        assert ckpts[arm].is_file()
        tokenizers[arm] = json.loads((text_run / "pretrain" / arm / "tokenizer.json").read_text())
        saved = yaml.safe_load((text_run / "pretrain" / arm / "config.yaml").read_text())
        assert saved["task_name"] == f"pydoc_{arm}"  # each arm pretrained its own objective
    # the checkpoints differ as their objectives do: a causal backbone, a bidirectional one
    # (the two tokenizers are the same: the same corpus and vocabulary size)
    causal = {
        arm: torch.load(ckpt, weights_only=True)["ptft_backbone"]["config"]["causal"]
        for arm, ckpt in ckpts.items()
    }
    assert causal == {"gpt": True, "bert": False, "contrastive": False}
    for task, arm, method in [
        ("names", "gpt", "finetune"),
        ("package", "gpt", "linear_probe"),
        ("package", "gpt", "finetune"),
        ("package", "bert", "linear_probe"),
        ("package", "bert", "finetune"),
        ("package", "contrastive", "finetune"),
    ]:
        fraction = TEXT_TASKS[task][1][-1]
        run = text_run / "finetune" / task / f"fraction_{fraction}" / f"{arm}-{method}" / "seed_0"
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert Path(saved["model"]["pretrained"]).resolve() == ckpts[arm].resolve()
        assert json.loads((run / "tokenizer.json").read_text()) == tokenizers[arm]
        assert json.loads((run / "result.json").read_text())["arm"] == arm
    scratch = text_run / "finetune" / "names" / "fraction_1.0" / "scratch" / "seed_0"
    assert yaml.safe_load((scratch / "config.yaml").read_text())["model"]["pretrained"] is None
    assert not (text_run / "finetune" / "names" / "fraction_1.0" / "bert-finetune").exists()
    assert not list((text_run / "finetune").rglob("*.ckpt"))


def test_text_report_has_a_table_per_task(text_run):
    report = (text_run / "results.md").read_text()
    assert "## package" in report and "## names" in report
    assert (
        "| label fraction | scratch | gpt linear_probe | bert linear_probe | gpt finetune "
        "| bert finetune | contrastive finetune | gpt gradual_unfreeze | gpt discriminative_lr |"
        in report
    )
    assert "| label fraction | scratch | gpt finetune |" in report
    assert (
        "| label fraction | method | test/ppl | test/token_acc (%) | test/word_f1 (%) "
        "| test/exact_match (%) | test/exact_count |" in report
    )
    assert (text_run / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -------------------------------------------------------- checks before pretraining
def check_study(overrides: list[str]) -> None:
    """Compose ``pipeline.yaml`` as ptft-pipeline would and run the study's up-front checks."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        check(compose(config_name="pipeline", overrides=overrides))


@pytest.mark.parametrize("study", ["vision", "text"])
def test_every_study_composes_for_every_method(study):
    check_study([f"pipeline={study}"])


@pytest.mark.parametrize("bars", [False, True])
def test_on_a_terminal_a_run_draws_its_bars_below_the_studys(bars):
    from ptft.callbacks.progress import NestedProgressBar
    from ptft.runs.build import build_callbacks
    from ptft.study import runner

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="pipeline")
        run = runner.Run("digits", 0.1, "finetune", 0)
        overrides = runner.run_overrides(cfg, run, None, Path("unused"), bars=bars)
        run_cfg = runner.compose_train(overrides, "tasks.digits")
    runner.check_run(run_cfg, "tasks.digits")
    assert run_cfg.trainer.enable_progress_bar is bars
    callbacks = build_callbacks(run_cfg, has_logger=False)
    nested = [c for c in callbacks if isinstance(c, NestedProgressBar)]
    assert [c.process_position for c in nested] == ([1] if bars else [])
    assert len(callbacks) == len(nested)  # callbacks=none: nothing else


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["tasks.digits.methods=[scratch,prompt_tuning]"],
            "tasks.digits.methods: ['prompt_tuning'] are not known",
        ),
        (["pipeline=text", "tasks.package.methods=[scratch,svc]"], "svc fits raw pixels"),
        (
            ["tasks.digits.methods=[scratch,finetune,finetune]"],
            "tasks.digits.methods: ['finetune'] appear more than once",
        ),
        (
            ["tasks.digits.metrics=[val/acc,test/f1]"],
            "tasks.digits.metrics: ['val/acc'] are not test metrics",
        ),
        (["tasks.digits.label_fractions=[0.0]"], "tasks.digits.label_fractions"),
        (
            [
                "pipeline=text",
                '+tasks.names.method_overrides.finetune=["model.finetune=linear_probe"]',
            ],
            "tasks.names",
        ),
    ],
)
def test_a_bad_study_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        check_study(overrides)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------- report
METHODS = ["scratch", "linear_probe", "finetune"]
COLUMNS = {
    "cls": TaskColumns(METHODS, ["test/acc", "test/f1"]),
    "gen": TaskColumns(METHODS, ["test/ppl", "test/exact_match"]),
}
HEADER = "| label fraction | scratch | linear_probe | finetune |"


def made_up_results() -> list[Result]:
    """Two tasks: a classifier at two fractions (3 and 2 seeds) and a generator at one."""
    rng = np.random.default_rng(0)
    results = []
    for fraction, seeds in [(0.1, 3), (1.0, 2)]:
        for seed in range(seeds):
            for method in METHODS:
                acc, f1, val_acc = rng.uniform(0, 1, 3)
                metrics = {"test/acc": acc, "test/f1": f1, "val/acc": val_acc}
                results.append(Result("cls", fraction, method, seed, metrics, 1.0))
    for seed in range(3):
        for method in METHODS:
            ppl, em, val_ppl = rng.uniform(1, 500), rng.uniform(0, 1), rng.uniform(1, 500)
            metrics = {"test/ppl": ppl, "test/exact_match": em, "val/ppl": val_ppl}
            results.append(Result("gen", 1.0, method, seed, metrics, 1.0))
    return results


def values(
    results: list[Result], task: str, fraction: float, method: str, metric: str
) -> np.ndarray:
    return np.array(
        [
            r.metrics[metric]
            for r in results
            if (r.task, r.label_fraction, r.method) == (task, fraction, method)
        ]
    )


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The first markdown table in ``text`` that starts with ``header``: its rows by key cell(s)."""
    key_cells = 2 if "| method |" in header else 1
    rows = {}
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[" ".join(cells[:key_cells])] = cells[key_cells:]
    return rows


def test_report_tables_hold_the_means_and_stds_over_seeds():
    results = made_up_results()
    report = markdown_report(results, COLUMNS)
    cls, gen = (
        report[report.index("## cls") : report.index("## gen")],
        report[report.index("## gen") :],
    )

    headline = table_rows(cls, HEADER)
    assert set(headline) == {"0.1", "1"}
    for fraction, key in [(0.1, "0.1"), (1.0, "1")]:
        for i, method in enumerate(METHODS):
            v = values(results, "cls", fraction, method, "test/acc")
            assert headline[key][i] == f"{100 * v.mean():.1f} ± {100 * v.std():.1f} (n={len(v)})"
    # the generator's headline is a perplexity: shown as is, not in %
    headline = table_rows(gen, HEADER)
    for i, method in enumerate(METHODS):
        v = values(results, "gen", 1.0, method, "test/ppl")
        assert headline["1"][i] == f"{v.mean():.2f} ± {v.std():.2f} (n=3)"
    every = table_rows(gen, "| label fraction | method | test/ppl | test/exact_match (%) |")
    for method in METHODS:
        assert every[f"1 {method}"] == [
            f"{values(results, 'gen', 1.0, method, 'test/ppl').mean():.2f}",
            f"{100 * values(results, 'gen', 1.0, method, 'test/exact_match').mean():.1f}",
        ]


def test_csv_leaves_other_tasks_metrics_empty(tmp_path):
    results = made_up_results()
    write_csv(results, COLUMNS, tmp_path / "results.csv")
    rows = csv_rows(tmp_path)
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
        "test/ppl",
        "test/exact_match",
        "val/ppl",
        "val/exact_match",
        "seconds",
    ]
    assert len(rows) == len(results)
    assert all(r["test/ppl"] == r["val/ppl"] == "" for r in rows if r["task"] == "cls")
    assert all(r["test/acc"] == r["val/acc"] == "" for r in rows if r["task"] == "gen")
    assert float(rows[0]["test/acc"]) == pytest.approx(results[0].metrics["test/acc"])


def test_score_is_the_best_pretrained_method_of_the_first_task_at_its_smallest_fraction():
    # on validation: a sweep never selects on test
    results = made_up_results()
    accs = [values(results, "cls", 0.1, m, "val/acc").mean() for m in ("linear_probe", "finetune")]
    assert study_score(results, COLUMNS) == pytest.approx(max(accs))
    # a lower-is-better headline (perplexity) picks the lowest mean
    ppls = [values(results, "gen", 1.0, m, "val/ppl").mean() for m in ("linear_probe", "finetune")]
    assert study_score(results, {"gen": COLUMNS["gen"], "cls": COLUMNS["cls"]}) == pytest.approx(
        min(ppls)
    )
