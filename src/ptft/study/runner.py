"""The label-efficiency study behind ``ptft-pipeline``.

Pretrain once (or reuse a checkpoint), then for every task, label fraction, seed and method
fine-tune in this process (imports cost seconds; a run on digits costs about as much), and,
for image tasks, fit scikit-learn's SVC on the raw pixels of the very same labelled subsets.
Every task's config is composed before pretraining starts, so a bad override fails at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ptft.cli import quote_override
from ptft.config.validate import validate
from ptft.errors import ConfigError
from ptft.handoff import resolve_checkpoint
from ptft.runs.build import build_datamodule, plain
from ptft.runs.fit import train
from ptft.study.report import PRETRAINED_METHODS, Result, TaskColumns, write_report

log = logging.getLogger(__name__)

#: scratch: random init | linear_probe, finetune, gradual_unfreeze, discriminative_lr: the
#: pretrained backbone (how each freezes or steps comes from the task's method_overrides) |
#: svc: SVC on raw pixels (images only)
METHODS = ("scratch", *PRETRAINED_METHODS, "svc")
#: what the SVC baseline measures
SVC_METRICS = ("test/acc", "test/f1")
#: fine-tuning runs inside the study write no checkpoints and draw no progress bars; they are
#: tested on their final weights (choosing by validation accuracy would use more labels)
QUIET = [
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@dataclass(frozen=True)
class Run:
    """One fine-tuning run (or SVC fit) of the study."""

    task: str
    fraction: float
    method: str
    seed: int

    def directory(self, out: Path) -> Path:
        return (
            out
            / "finetune"
            / self.task
            / f"fraction_{self.fraction}"
            / self.method
            / f"seed_{self.seed}"
        )


def compose_train(overrides: list[str], where: str) -> DictConfig:
    """``train.yaml`` composed with ``overrides``; ``where`` names the config key they came from."""
    try:
        return compose(config_name="train", overrides=overrides)
    except Exception as err:  # Hydra's own errors name the bad override
        raise ConfigError(f"{where} {overrides} do not compose: {err}".replace("\n", " ")) from err


def seeds_for(task: DictConfig, fraction: float) -> list[int]:
    small = task.small_fraction_seeds if task.small_fraction_seeds is not None else task.seeds
    return list(range(small if fraction <= task.small_fraction else task.seeds))


def plan(cfg: DictConfig) -> Iterator[Run]:
    """Every run of the study, in the order they run: task, fraction, seed, method."""
    for name, task in cfg.tasks.items():
        for fraction in task.label_fractions:
            for seed in seeds_for(task, fraction):
                for method in task.methods:
                    yield Run(str(name), float(fraction), str(method), seed)


def run_overrides(cfg: DictConfig, run: Run, ckpt: Path | None, stage_dir: Path) -> list[str]:
    """The ``ptft-train`` overrides of one run: the task's, then the study's, then the method's."""
    task = cfg.tasks[run.task]
    pretrained = run.method in PRETRAINED_METHODS and ckpt is not None
    return [
        *task.overrides,
        *QUIET,
        f"model.pretrained={quote_override(ckpt) if pretrained else 'null'}",
        f"data.label_fraction={run.fraction}",
        # the seed picks the labelled subset too (the digits config says so itself; text does not)
        f"data.subset_seed={run.seed}",
        f"seed={run.seed}",
        f"paths.output_dir={quote_override(stage_dir)}",
        *task.method_overrides.get(run.method, []),
    ]


def is_image_data(data_cfg: DictConfig) -> bool:
    """Images are ``(channels, height, width)``; token data are ``(length,)``."""
    return len(data_cfg.get("input_shape") or []) == 3


def check(cfg: DictConfig) -> None:
    """Fail before pretraining: unknown methods, a bad task, overrides that do not compose, or
    a run whose config the code it names does not accept (the pretraining run's included)."""
    if not cfg.tasks:
        raise ConfigError(
            "tasks is empty; choose a study with pipeline=vision|text or add tasks.<name>"
        )
    for name, task in cfg.tasks.items():
        key = f"tasks.{name}"
        unknown = sorted(set(task.methods) - set(METHODS))
        if unknown:
            raise ConfigError(
                f"{key}.methods: {unknown} are not known; choose from {list(METHODS)}"
            )
        unknown = sorted(set(task.method_overrides) - set(METHODS))
        if unknown:
            raise ConfigError(
                f"{key}.method_overrides: {unknown} are not methods; use keys from {list(METHODS)}"
            )
        if not task.methods or not task.metrics or not task.label_fractions:
            raise ConfigError(
                f"{key}: methods, metrics and label_fractions must each name at least one"
            )
        bad = [f for f in task.label_fractions if not 0.0 < f <= 1.0]
        if bad:
            raise ConfigError(f"{key}.label_fractions: {bad} are not in (0, 1]")
        if task.seeds < 1:
            raise ConfigError(f"{key}.seeds={task.seeds}: run at least one seed")
        if "svc" in task.methods and task.metrics[0] not in SVC_METRICS:
            raise ConfigError(
                f"{key}.metrics: svc reports only {list(SVC_METRICS)}; "
                "put one of them first or drop svc"
            )
        for method in task.methods:
            run = Run(str(name), float(task.label_fractions[0]), str(method), 0)
            where = f"{key}.overrides + method_overrides.{method}"
            run_cfg = compose_train(run_overrides(cfg, run, None, Path("unused")), where)
            check_run(run_cfg, where)
            if method == "svc" and not is_image_data(run_cfg.data):
                raise ConfigError(
                    f"{key}.methods: svc fits raw pixels, but this task's data are not images; "
                    "drop svc"
                )
    if not cfg.pretrained and any(r.method in PRETRAINED_METHODS for r in plan(cfg)):
        overrides = [*cfg.pretrain.overrides, f"paths.output_dir={quote_override(Path('unused'))}"]
        check_run(compose_train(overrides, "pretrain.overrides"), "pretrain.overrides")


def check_run(run_cfg: DictConfig, where: str) -> None:
    """The ``_target_`` nodes of one run's config checked against the code
    (:mod:`ptft.config.validate`); ``where`` names the study's keys the run came from."""
    try:
        validate(run_cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def pretrain(cfg: DictConfig, out: Path) -> Path:
    """Run the pretraining stage (or reuse ``cfg.pretrained``) and return its checkpoint."""
    if cfg.pretrained:
        return resolve_checkpoint(cfg.pretrained)
    stage_dir = out / "pretrain"
    run_cfg = compose_train(
        [*cfg.pretrain.overrides, f"paths.output_dir={quote_override(stage_dir)}"],
        "pretrain.overrides",
    )
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
    start = time.perf_counter()
    train(run_cfg)
    log.info("pretraining took %.1f s", time.perf_counter() - start)
    return resolve_checkpoint(stage_dir)


def svc_scores(run_cfg: DictConfig, svc_kwargs: dict[str, Any]) -> dict[str, float]:
    """Test accuracy and macro F1 of scikit-learn's SVC on raw pixels of the run's own
    labelled subset (the data config of a fine-tuning run at the same fraction and seed)."""
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC

    datamodule = build_datamodule(plain(run_cfg.data), supervised=True)
    datamodule.setup("fit")
    (x, y), (xt, yt) = datamodule.splits["train"], datamodule.splits["test"]
    predicted = (
        SVC(**svc_kwargs).fit(x.flatten(1).numpy(), y.numpy()).predict(xt.flatten(1).numpy())
    )
    return {
        "test/acc": float(np.mean(predicted == yt.numpy())),
        "test/f1": float(f1_score(yt.numpy(), predicted, average="macro")),
    }


def run_one(cfg: DictConfig, run: Run, ckpt: Path | None, out: Path) -> dict[str, float]:
    """Fine-tune (or fit the SVC) and return the task's metrics."""
    task = cfg.tasks[run.task]
    stage_dir = run.directory(out)
    run_cfg = compose_train(run_overrides(cfg, run, ckpt, stage_dir), f"tasks.{run.task}.overrides")
    if run.method == "svc":
        scores = svc_scores(run_cfg, plain(cfg.svc))
        return {m: scores[m] for m in task.metrics if m in scores}
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
    logged = train(run_cfg)
    missing = [m for m in task.metrics if m not in logged]
    if missing:
        tests = sorted(k for k in logged if k.startswith("test/"))
        raise ConfigError(
            f"tasks.{run.task}.metrics: {missing} were not logged by the run; it logs {tests}"
        )
    return {m: logged[m] for m in task.metrics}


def run_study(cfg: DictConfig) -> float:
    """Run the whole study, write its report, and return :func:`ptft.study.report.study_score`."""
    check(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    runs = list(plan(cfg))
    ckpt = pretrain(cfg, out) if any(r.method in PRETRAINED_METHODS for r in runs) else None
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)

    results: list[Result] = []
    for run in runs:
        start = time.perf_counter()
        metrics = run_one(cfg, run, ckpt, out)
        result = Result(
            run.task, run.fraction, run.method, run.seed, metrics, time.perf_counter() - start
        )
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log.info(
            "%s fraction %-5g %-12s seed %d: %s (%.1f s)",
            run.task,
            run.fraction,
            run.method,
            run.seed,
            shown,
            result.seconds,
        )
        results.append(result)
    tasks = {
        str(name): TaskColumns(list(t.methods), list(t.metrics)) for name, t in cfg.tasks.items()
    }
    return write_report(results, out, tasks)
