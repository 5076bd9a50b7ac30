"""The label-efficiency study behind ``ptft-pipeline``.

Pretrain once per arm (``pretrain.arms.<name>``: an objective, say; or the one unnamed arm of
``pretrain.overrides``), or reuse a checkpoint, then for every task, label fraction, seed and
method (each pretrained method once from each arm) fine-tune in this process (imports cost
seconds; a run on digits costs about as much), and, for image tasks, fit scikit-learn's SVC
on the raw pixels of the very same labelled subsets. Every task's config and every arm's
pretraining config is composed before pretraining starts, so a bad override fails at once.

A study started again in its own run directory (``hydra.run.dir=<that directory>``, with the
same overrides) goes on where it stopped: ``study.json`` records the study's plan, and every
stage writes ``result.json`` (atomically) into its directory when it finishes; a restart
checks the plan, keeps every recorded result and runs only the rest (docs/pipeline.md).

Every run's log line says how far the study is (``[23/84] … elapsed 12:01, ~6 min left``,
:mod:`ptft.study.progress`); on a terminal one overall bar says it too, above the run's own.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ptft.cli import quote_override, unknown_option
from ptft.config.bounds import annotations, violation
from ptft.config.schemas import PretrainArm
from ptft.config.validate import validate
from ptft.errors import ConfigError
from ptft.files import write_atomic
from ptft.handoff import resolve_checkpoint
from ptft.runs.build import build_datamodule, plain
from ptft.runs.fit import train
from ptft.study.progress import OverallBar, StudyProgress
from ptft.study.report import (
    PRETRAINED_METHODS,
    Result,
    TaskColumns,
    column_label,
    val_counterpart,
    write_report,
)

log = logging.getLogger(__name__)

#: scratch: random init | linear_probe, finetune, gradual_unfreeze, discriminative_lr, lora: the
#: pretrained backbone (how each freezes, adapts or steps comes from the task's
#: method_overrides, e.g. lora: [model.finetune=lora]) | svc: SVC on raw pixels (images only)
METHODS = ("scratch", *PRETRAINED_METHODS, "svc")
#: what the SVC baseline measures (on the test split, and on the validation split as val/…)
SVC_METRICS = ("test/acc", "test/f1")
#: fine-tuning runs inside the study write no checkpoints and no model summary; they are
#: tested on their final weights (choosing by validation accuracy would use more labels)
QUIET = [
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "trainer.enable_model_summary=false",
]
#: a run's progress: none when the study's output is not a terminal (a log file, CI) …
NO_BARS = ["trainer.enable_progress_bar=false"]
#: … else Lightning's bars, below the study's overall bar and cleared when the run ends
NESTED_BARS = [
    "trainer.enable_progress_bar=true",
    "+callbacks.run_progress._target_=ptft.callbacks.progress.NestedProgressBar",
    "+callbacks.run_progress.process_position=1",
]
#: the study's plan, written when it starts, read when it starts again in the same directory
STUDY_FILE = "study.json"
#: written into a stage's directory (the pretraining's, each run's) when the stage finishes
RESULT_FILE = "result.json"
#: top-level keys of the study's config that are not its plan (where it writes, Hydra's own)
NOT_THE_PLAN = ("paths", "hydra")
#: an arm's name: a directory name and a word of a table's column label
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Run:
    """One fine-tuning run (or SVC fit) of the study; ``arm`` names the pretraining arm a
    pretrained method starts from ("" for scratch and svc, and for the one unnamed arm)."""

    task: str
    fraction: float
    method: str
    seed: int
    arm: str = ""

    def directory(self, out: Path) -> Path:
        return (
            out
            / "finetune"
            / self.task
            / f"fraction_{self.fraction}"
            / (f"{self.arm}-{self.method}" if self.arm else self.method)
            / f"seed_{self.seed}"
        )


@dataclass(frozen=True)
class Arm:
    """One pretraining of the study: a named arm (``pretrain.arms.<name>``), or the one unnamed
    arm (``name`` "": ``pretrain.overrides`` and the top-level ``pretrained``)."""

    name: str
    overrides: tuple[str, ...] = ()
    #: a checkpoint or run directory to reuse instead of pretraining
    pretrained: str | None = None
    #: the pretrained methods that run from it (None: every one a task lists)
    methods: tuple[str, ...] | None = None
    #: overrides per pretrained method from it, after the task's (``method_overrides``)
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Where its settings are: ``pretrain.arms.<name>``, or ``pretrain`` when unnamed."""
        return f"pretrain.arms.{self.name}" if self.name else "pretrain"

    def directory(self, out: Path) -> Path:
        """``<out>/pretrain/<name>/``; ``<out>/pretrain/`` for the unnamed arm."""
        return out / "pretrain" / self.name if self.name else out / "pretrain"

    def runs(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def named_arms(cfg: DictConfig) -> dict[str, Any]:
    """``pretrain.arms`` as plain values, leaving out arms set to null (``pretrain.arms.x=null``
    drops one, as ``~pretrain.arms.x`` does)."""
    raw = OmegaConf.to_container(cfg.pretrain.arms, resolve=True) if cfg.pretrain.arms else {}
    return {str(k): v for k, v in raw.items() if v is not None}


def arms(cfg: DictConfig) -> dict[str, Arm]:
    """The study's pretraining arms by name, in order: the named ones (``pretrain.arms``), or
    the one unnamed arm ("") of ``pretrain.overrides`` and the top-level ``pretrained``.
    Assumes :func:`check_arms` passed."""
    named = named_arms(cfg)
    if not named:
        return {"": Arm("", tuple(cfg.pretrain.overrides), cfg.pretrained or None)}
    out = {}
    for name, raw in named.items():
        arm = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainArm), raw))
        methods = tuple(arm.methods) if arm.methods is not None else None
        per_method = {str(m): tuple(o) for m, o in arm.method_overrides.items()}
        out[name] = Arm(name, tuple(arm.overrides), arm.pretrained or None, methods, per_method)
    return out


def task_arms(cfg: DictConfig, task: str) -> list[Arm]:
    """The arms the task's pretrained methods run from: those it lists (``tasks.<t>.arms``,
    in the study's order), or every arm."""
    study = arms(cfg)
    wanted = cfg.tasks[task].arms
    return [arm for name, arm in study.items() if wanted is None or name in wanted]


def task_columns(cfg: DictConfig, task: str) -> list[tuple[str, str]]:
    """The task's ``(arm, method)`` pairs in order: each method as listed, a pretrained one
    once from each of the task's arms that runs it, scratch and svc once (arm "")."""
    columns = []
    for method in cfg.tasks[task].methods:
        if method in PRETRAINED_METHODS:
            columns += [(a.name, str(method)) for a in task_arms(cfg, task) if a.runs(method)]
        else:
            columns.append(("", str(method)))
    return columns


def compose_train(overrides: list[str], where: str) -> DictConfig:
    """``train.yaml`` composed with ``overrides``; ``where`` names the config key they came from.
    An option an optional group does not have (``experiment=digits_rotaton``), which Hydra
    would take silently and compose the default run without, is refused too."""
    try:
        cfg = compose(config_name="train", overrides=overrides)
    except Exception as err:  # Hydra's own errors name the bad override
        raise ConfigError(f"{where} {overrides} do not compose: {err}".replace("\n", " ")) from err
    error = unknown_option(GlobalHydra.instance().config_loader(), overrides)
    if error:
        raise ConfigError(f"{where}: {error}")
    return cfg


def seeds_for(task: DictConfig, fraction: float) -> list[int]:
    small = task.small_fraction_seeds if task.small_fraction_seeds is not None else task.seeds
    return list(range(small if fraction <= task.small_fraction else task.seeds))


def plan(cfg: DictConfig) -> Iterator[Run]:
    """Every run of the study, in the order they run: task, fraction, seed, then method (a
    pretrained method once from each of the task's arms that runs it, in the arms' order)."""
    for name, task in cfg.tasks.items():
        columns = task_columns(cfg, str(name))
        for fraction in task.label_fractions:
            for seed in seeds_for(task, fraction):
                for arm, method in columns:
                    yield Run(str(name), float(fraction), method, seed, arm)


def interactive() -> bool:
    """Whether the study draws progress bars: only when its output is a terminal."""
    return sys.stdout is not None and sys.stdout.isatty()


def run_overrides(
    cfg: DictConfig, run: Run, ckpt: Path | None, stage_dir: Path, bars: bool = False
) -> list[str]:
    """The ``ptft-train`` overrides of one run: the task's, then the study's, then the method's
    (the task's, then its arm's); with ``bars``, the run draws Lightning's progress bars below
    the study's."""
    task = cfg.tasks[run.task]
    pretrained = run.method in PRETRAINED_METHODS and ckpt is not None
    arm = arms(cfg).get(run.arm) if run.method in PRETRAINED_METHODS else None
    return [
        *task.overrides,
        *QUIET,
        *(NESTED_BARS if bars else NO_BARS),
        f"model.pretrained={quote_override(ckpt) if pretrained else 'null'}",
        f"data.label_fraction={run.fraction}",
        # the seed picks the labelled subset too (as the data configs do: subset_seed: ${seed})
        f"data.subset_seed={run.seed}",
        f"seed={run.seed}",
        f"paths.output_dir={quote_override(stage_dir)}",
        *task.method_overrides.get(run.method, []),
        *(arm.method_overrides.get(run.method, ()) if arm else ()),
    ]


def is_image_data(data_cfg: DictConfig) -> bool:
    """Images are ``(channels, height, width)``; token data are ``(length,)``."""
    return len(data_cfg.get("input_shape") or []) == 3


def check_arms(cfg: DictConfig) -> None:
    """Fail on a bad ``pretrain``: the one-arm form and named arms both given, a top-level
    ``pretrained`` with named arms, an arm's name, keys, values or methods; or a task's
    ``arms`` naming an arm the study does not have."""
    named = named_arms(cfg)
    if named:
        listed = ", ".join(named)
        if cfg.pretrain.overrides:
            raise ConfigError(
                f"pretrain.overrides and pretrain.arms ({listed}) are both set; pick one: "
                "pretrain.arms=null for the one-arm form (pretrain.overrides), or each arm's "
                "overrides as pretrain.arms.<name>.overrides"
            )
        if cfg.pretrained:
            raise ConfigError(
                f"pretrained={cfg.pretrained} reuses the one unnamed arm's checkpoint, but the "
                f"study has named arms ({listed}); reuse an arm's as "
                "pretrain.arms.<name>.pretrained=…, or use the one-arm form with pretrain.arms=null"
            )
    for name, raw in named.items():
        check_arm(name, raw)
    for task_name, task in cfg.tasks.items():
        unknown = [str(a) for a in task.arms or [] if a not in named]
        if unknown:
            has = (
                f"its arms are {list(named)}"
                if named
                else "it has none named (the one-arm form, pretrain.overrides): "
                f"set tasks.{task_name}.arms=null"
            )
            raise ConfigError(f"tasks.{task_name}.arms: {unknown} are not arms of the study; {has}")


def check_arm(name: str, raw: Any) -> None:
    """One named arm (``pretrain.arms.<name>``, plain values) against :class:`PretrainArm`:
    its name, its keys and their types, the bounds they declare (a ``pretrained`` that
    exists), and its methods."""
    key = f"pretrain.arms.{name}"
    hints = annotations(PretrainArm)
    if not ARM_NAME.fullmatch(name):
        raise ConfigError(
            f"pretrain.arms: {name!r} is not an arm name; name arms with letters, digits, "
            "'_', '.' and '-' (a letter or digit first)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{key}={raw!r}: an arm is a mapping (overrides: [...], pretrained: null, "
            f"methods: null); set its overrides as +{key}.overrides=[...]"
        )
    try:
        arm = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(PretrainArm), raw))
    except OmegaConfBaseException as err:
        first = str(err).splitlines()[0]
        where = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{where}: {first}; an arm takes {list(hints)}") from None
    for field_name, ann in hints.items():
        problem = violation(arm[field_name], ann)
        if problem:
            raise ConfigError(f"{key}.{field_name}={arm[field_name]}: {problem}")
    for listed in ("methods", "method_overrides"):
        unknown = [m for m in arm[listed] or [] if m not in PRETRAINED_METHODS]
        if unknown:
            raise ConfigError(
                f"{key}.{listed}: {unknown} are not pretrained methods; choose from "
                f"{list(PRETRAINED_METHODS)} (scratch and svc use no arm)"
            )


def check(cfg: DictConfig) -> None:
    """Fail before pretraining: unknown methods or arms, a bad task or arm, overrides that do
    not compose, or a run whose config the code it names does not accept (every arm's
    pretraining run included)."""
    if not cfg.tasks:
        raise ConfigError(
            "tasks is empty; choose a study with pipeline=vision|text or add tasks.<name>"
        )
    check_arms(cfg)
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
        for listed in ("methods", "label_fractions", "metrics"):
            values = list(task[listed])
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"{key}.{listed}: {twice} appear more than once; list each once")
        not_test = [m for m in task.metrics if not str(m).startswith("test/") or m == "test/"]
        if not_test:
            raise ConfigError(
                f"{key}.metrics: {not_test} are not test metrics; list test/<name> metrics "
                "(each run records their val/<name> counterparts too)"
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
        composed: set[tuple[str, ...]] = set()
        for arm_name, method in task_columns(cfg, str(name)):
            run = Run(str(name), float(task.label_fractions[0]), method, 0, arm_name)
            overrides = run_overrides(cfg, run, None, Path("unused"), bars=interactive())
            if tuple(overrides) in composed:  # the same run from another arm: checked
                continue
            composed.add(tuple(overrides))
            where = f"{key}.overrides + method_overrides.{method}"
            arm = arms(cfg).get(arm_name)
            if arm is not None and method in arm.method_overrides:
                where += f" + {arm.key}.method_overrides.{method}"
            run_cfg = compose_train(overrides, where)
            check_run(run_cfg, where)
            if method == "svc" and not is_image_data(run_cfg.data):
                raise ConfigError(
                    f"{key}.methods: svc fits raw pixels, but this task's data are not images; "
                    "drop svc"
                )
    used = {r.arm for r in plan(cfg) if r.method in PRETRAINED_METHODS}
    for arm in arms(cfg).values():
        if arm.name in used and not arm.pretrained:
            where = f"{arm.key}.overrides"
            overrides = [*arm.overrides, f"paths.output_dir={quote_override(Path('unused'))}"]
            check_run(compose_train(overrides, where), where)
    restarted = given_run_dir(cfg)
    if restarted is not None:
        check_same_study(cfg, restarted)


def given_run_dir(cfg: DictConfig) -> Path | None:
    """The run directory named on the command line (``hydra.run.dir=…``), when ``cfg`` holds
    Hydra's node (the check made before Hydra starts); None for a directory still to be made
    (an interpolation: resolving ``${ptft.unique:…}`` would claim one)."""
    if "hydra" not in cfg or "run" not in cfg.hydra:
        return None
    raw = OmegaConf.to_container(cfg.hydra.run, resolve=False).get("dir")
    return Path(raw) if isinstance(raw, str) and "${" not in raw else None


def study_plan(cfg: DictConfig) -> dict[str, Any]:
    """What makes the study what it is: every top-level key but where it writes, resolved,
    as plain JSON values."""
    plan_ = {}
    for key in cfg:
        if key in NOT_THE_PLAN:
            continue
        value = cfg[key]
        plan_[str(key)] = (
            OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        )
    return json.loads(json.dumps(plan_))


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``key: <old> there, <new> here`` for each dotted key whose value differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for k in dict.fromkeys([*old, *new])
            for line in differences(
                old.get(k, "(unset)"), new.get(k, "(unset)"), f"{key}.{k}" if key else str(k)
            )
        ]
    return [] if old == new else [f"{key}: {json.dumps(old)} there, {json.dumps(new)} here"]


def check_same_study(cfg: DictConfig, out: Path) -> bool:
    """True when ``out`` holds a study started earlier, the same as ``cfg``'s; a one-line
    :class:`ConfigError` when it holds another; False when it holds none."""
    path = out / STUDY_FILE
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())
        old_plan, old_overrides = recorded["plan"], recorded["overrides"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"hydra.run.dir={out}: its {STUDY_FILE} is not readable ({type(err).__name__}); "
            "choose a new hydra.run.dir"
        ) from None
    changed = differences(old_plan, study_plan(cfg))
    if changed:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if changed[3:] else "")
        raise ConfigError(
            f"hydra.run.dir={out} holds another study ({shown}); start it again with its own "
            f"overrides ({shlex.join(old_overrides) or 'none'}) or choose a new hydra.run.dir"
        )
    return True


def start_study(cfg: DictConfig, out: Path, overrides: list[str]) -> bool:
    """Check the study against the one recorded in ``out`` (True: a restart), or record it."""
    if check_same_study(cfg, out):
        return True
    record = {"plan": study_plan(cfg), "overrides": overrides}
    write_atomic(out / STUDY_FILE, json.dumps(record, indent=1) + "\n")
    return False


def read_result(directory: Path) -> dict[str, Any] | None:
    """The ``result.json`` a finished stage left in ``directory`` (None when it did not finish)."""
    try:
        return json.loads((directory / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def set_aside(directory: Path) -> None:
    """Move what an unfinished attempt of a stage wrote to ``<name>.interrupted-<n>``, so the
    stage starts over in a clean directory (its logs are not mixed with the new attempt's)."""
    if not directory.exists():
        return
    n = 1
    while directory.with_name(f"{directory.name}.interrupted-{n}").exists():
        n += 1
    aside = directory.with_name(f"{directory.name}.interrupted-{n}")
    directory.rename(aside)
    log.info("%s did not finish: what it wrote is now in %s", directory, aside.name)


def check_run(run_cfg: DictConfig, where: str) -> None:
    """The ``_target_`` nodes of one run's config checked against the code
    (:mod:`ptft.config.validate`); ``where`` names the study's keys the run came from."""
    try:
        validate(run_cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def pretrain(arm: Arm, out: Path) -> Path:
    """Run one arm's pretraining (or reuse its ``pretrained``) and return its checkpoint.

    A pretraining that finished in an earlier start of the study (its ``result.json`` names a
    checkpoint that is there) is kept; one that did not finish resumes from its
    ``checkpoints/last.ckpt`` (``ckpt_path=``), or starts over when it has none.
    """
    what = f"pretraining {arm.name}" if arm.name else "pretraining"
    if arm.pretrained:
        key = f"{arm.key}.pretrained" if arm.name else "pretrained"
        return resolve_checkpoint(arm.pretrained, key)
    stage_dir = arm.directory(out)
    done = read_result(stage_dir)
    if isinstance(done, dict) and isinstance(done.get("checkpoint"), str):
        ckpt = stage_dir / done["checkpoint"]
        if ckpt.is_file():
            log.info("%s finished in an earlier start: %s", what, ckpt)
            return ckpt
    overrides = [*arm.overrides, f"paths.output_dir={quote_override(stage_dir)}"]
    last = stage_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("%s did not finish: resuming it from %s", what, last)
        overrides.append(f"ckpt_path={quote_override(last)}")
    else:
        set_aside(stage_dir)
    run_cfg = compose_train(overrides, f"{arm.key}.overrides")
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
    start = time.perf_counter()
    train(run_cfg)
    seconds = time.perf_counter() - start
    log.info("%s took %.1f s", what, seconds)
    ckpt = resolve_checkpoint(stage_dir)
    record = {"checkpoint": str(ckpt.relative_to(stage_dir)), "seconds": seconds}
    write_atomic(stage_dir / RESULT_FILE, json.dumps(record, indent=1) + "\n")
    return ckpt


def svc_scores(run_cfg: DictConfig, svc_kwargs: dict[str, Any]) -> dict[str, float]:
    """Accuracy and macro F1 of scikit-learn's SVC on raw pixels of the run's own labelled
    subset (the data config of a fine-tuning run at the same fraction and seed), on the test
    split (``test/…``) and on the validation split (``val/…``)."""
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC

    datamodule = build_datamodule(plain(run_cfg.data), supervised=True)
    datamodule.setup("fit")
    x, y = datamodule.splits["train"]
    svc = SVC(**svc_kwargs).fit(x.flatten(1).numpy(), y.numpy())
    scores = {}
    for split, stage in (("test", "test"), ("val", "val")):
        xs, ys = datamodule.splits[split]
        predicted = svc.predict(xs.flatten(1).numpy())
        scores[f"{stage}/acc"] = float(np.mean(predicted == ys.numpy()))
        scores[f"{stage}/f1"] = float(f1_score(ys.numpy(), predicted, average="macro"))
    return scores


def run_one(
    cfg: DictConfig, run: Run, ckpt: Path | None, out: Path, bars: bool = False
) -> dict[str, float]:
    """Fine-tune (or fit the SVC) and return the task's test metrics and, where the run logged
    them, their validation counterparts (its last validation: the final weights when it
    validates on its last step, as the shipped experiments do)."""
    task = cfg.tasks[run.task]
    stage_dir = run.directory(out)
    overrides = run_overrides(cfg, run, ckpt, stage_dir, bars)
    run_cfg = compose_train(overrides, f"tasks.{run.task}.overrides")
    wanted = [*task.metrics, *(val_counterpart(m) for m in task.metrics)]
    if run.method == "svc":
        scores = svc_scores(run_cfg, plain(cfg.svc))
        return {m: scores[m] for m in wanted if m in scores}
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
    logged = train(run_cfg)
    missing = [m for m in task.metrics if m not in logged]
    if missing:
        tests = sorted(k for k in logged if k.startswith("test/"))
        raise ConfigError(
            f"tasks.{run.task}.metrics: {missing} were not logged by the run; it logs {tests}"
        )
    unvalidated = [m for m in wanted if m not in logged]
    if unvalidated:
        log.warning(
            "%s logged no %s (did it validate?): its val columns stay empty",
            stage_dir,
            ", ".join(unvalidated),
        )
    return {m: logged[m] for m in wanted if m in logged}


def recorded(cfg: DictConfig, run: Run, out: Path) -> Result | None:
    """The result a finished run recorded in an earlier start of the study, if it is whole."""
    record = read_result(run.directory(out))
    try:
        result = Result(**record) if record else None
    except TypeError:
        result = None
    if result is None:
        return None
    same_run = (result.task, result.label_fraction, result.arm, result.method, result.seed) == (
        run.task,
        run.fraction,
        run.arm,
        run.method,
        run.seed,
    )
    if not same_run or not set(cfg.tasks[run.task].metrics) <= set(result.metrics):
        log.warning("%s does not record this run: running it again", run.directory(out))
        return None
    return result


def run_study(cfg: DictConfig, out: Path | None = None) -> float:
    """Run the whole study into ``out`` (the Hydra run directory by default), write its report,
    and return :func:`ptft.study.report.study_score` (a validation metric). In a directory
    where the same study started before, only the runs without a recorded result run."""
    check(cfg)
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if out is None:
        out = Path(hydra.runtime.output_dir)
    restarted = start_study(cfg, out, list(hydra.overrides.task) if hydra else [])
    runs = list(plan(cfg))
    done = {run: recorded(cfg, run, out) for run in runs} if restarted else {}
    if restarted:
        finished = sum(r is not None for r in done.values())
        log.info("study restarted in %s: %d of %d runs had finished", out, finished, len(runs))
    todo = [r for r in runs if done.get(r) is None]
    # the elapsed time counts from here: pretraining is part of the wait
    progress = StudyProgress((run.task, run.arm, run.method) for run in runs)
    log.info("%d runs in the study, %d to run", len(runs), len(todo))
    # an arm is pretrained (or its checkpoint looked up) only when a run still needs it
    needed = {r.arm for r in todo if r.method in PRETRAINED_METHODS}
    ckpts = {name: pretrain(arm, out) for name, arm in arms(cfg).items() if name in needed}
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)

    bars = interactive()
    results = run_all(cfg, runs, done, ckpts, out, progress, bars)
    tasks = {
        str(name): TaskColumns(task_columns(cfg, str(name)), list(t.metrics))
        for name, t in cfg.tasks.items()
    }
    return write_report(results, out, tasks)


def run_all(
    cfg: DictConfig,
    runs: list[Run],
    done: dict[Run, Result | None],
    ckpts: dict[str, Path],
    out: Path,
    progress: StudyProgress,
    bars: bool,
) -> list[Result]:
    """Every run in plan order (a run recorded in ``done`` is kept, not run; a pretrained
    method starts from its arm's checkpoint in ``ckpts``), each logged with the study's
    progress; with ``bars``, one overall bar above the runs' own, log lines printed above
    both."""
    overall = OverallBar(progress, every=1.0) if bars else None
    results: list[Result] = []
    try:
        with drawn_above_bars() if bars else nullcontext():
            for run in runs:
                result = done.get(run)
                kind = (run.task, run.arm, run.method)
                if result is None:
                    progress.start_run(kind)
                    if overall is not None:
                        shown = column_label(run.arm, run.method)
                        overall.show(f"{run.task} {run.fraction:g} {shown} seed {run.seed}")
                    set_aside(run.directory(out))
                    start = time.perf_counter()
                    ckpt = ckpts.get(run.arm) if run.method in PRETRAINED_METHODS else None
                    metrics = run_one(cfg, run, ckpt, out, bars)
                    result = Result(
                        run.task,
                        run.fraction,
                        run.method,
                        run.seed,
                        metrics,
                        time.perf_counter() - start,
                        arm=run.arm,
                    )
                    write_atomic(
                        run.directory(out) / RESULT_FILE,
                        json.dumps(asdict(result), indent=1) + "\n",
                    )
                progress.finished(kind, result.seconds)
                if overall is not None:
                    overall.show("")
                log.info("%s", run_line(run, result, progress, earlier=done.get(run) is not None))
                results.append(result)
    finally:
        if overall is not None:
            overall.close()
    return results


@contextmanager
def drawn_above_bars() -> Iterator[None]:
    """Log records, and warnings (Lightning's come as warnings), written above the progress
    bars rather than through them, for the block."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        logging.captureWarnings(False)


def run_line(run: Run, result: Result, progress: StudyProgress, earlier: bool) -> str:
    """``[23/84] digits fraction 0.1   finetune     seed 0: test/acc 0.95, … (3.1 s); elapsed
    12:01, ~6 min left`` (``simclr finetune`` for a named arm's): a finished run's log line."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    when = ", earlier start" if earlier else ""
    return (
        f"{progress.count} {run.task} fraction {run.fraction:<5g} "
        f"{column_label(run.arm, run.method):<12} seed "
        f"{run.seed}: {shown} ({result.seconds:.1f} s{when}); {progress.timing}"
    )
