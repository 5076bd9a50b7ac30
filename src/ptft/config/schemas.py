"""Run-level schemas: typed dataclasses that Hydra merges under ``train.yaml``, ``eval.yaml``,
``generate.yaml``, ``pipeline.yaml`` and the ``trainer`` and ``paths`` groups.

A misspelled run setting or a value of the wrong type there fails while the config is
composed, naming the key, before torch is imported. What a ``_target_`` node takes (model,
backbone, optimizer, scheduler, data, callbacks, loggers) is said by the code it names, not
here: those nodes are open (:func:`open_node`), and :mod:`ptft.config.validate` checks them
against the constructor's signature before anything is built. ``register()`` puts these
schemas in Hydra's ConfigStore; the entry points call it before composing. The bounds in
the annotations (``PositiveInt``, ``NonEmptyStr``: :mod:`ptft.config.bounds`) are checked
before a run starts too (:func:`ptft.config.validate.check_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any  # noqa: UP035 -- OmegaConf needs typing.Optional on 3.10

from omegaconf import MISSING, DictConfig, OmegaConf

from ptft.config.bounds import (
    ExistingPath,
    Fraction,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Range,
    Seed,
)

# ruff: noqa: UP007 -- OmegaConf reads these annotations at runtime


def open_node() -> DictConfig:
    """An empty node that takes any key (not struct): what a ``_target_`` node accepts is
    checked against the code it names (:mod:`ptft.config.validate`), so ``model.x=1`` needs
    no ``+`` for a key the yaml leaves to the constructor's default. The flag survives
    Hydra's merge of the yaml files into it."""
    node = OmegaConf.create({})
    OmegaConf.set_struct(node, False)
    return node


#: a count that may be -1 for "no limit" (Lightning's max_epochs, max_steps, ...)
OrUnlimited = Annotated[int, Range(ge=-1)]
#: a checkpoint to read: it must exist when the run starts
CheckpointPath = Annotated[str, ExistingPath("no such checkpoint file")]
#: a checkpoint to resume from
ResumePath = Annotated[str, ExistingPath("no such checkpoint file; pass the .ckpt to resume from")]
#: a checkpoint or run directory to take a pretrained backbone from
PretrainedPath = Annotated[
    str, ExistingPath("no such file or directory; pass a .ckpt file or a run directory")
]


# ------------------------------------------------------------------------ trainer
@dataclass
class TrainerConfig:
    """The ``lightning.Trainer`` arguments ptft configs use; others can be added with
    ``+trainer.x=``."""

    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: NonEmptyStr | None = None
    accelerator: NonEmptyStr = "auto"
    devices: Any = "auto"
    num_nodes: PositiveInt = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    min_epochs: NonNegativeInt | None = None
    max_epochs: OrUnlimited | None = None
    max_steps: OrUnlimited = -1
    max_time: NonEmptyStr | None = None
    val_check_interval: Any = None
    check_val_every_n_epoch: PositiveInt | None = 1
    log_every_n_steps: NonNegativeInt | None = None  # 0: no logging
    accumulate_grad_batches: PositiveInt = 1
    gradient_clip_val: NonNegativeFloat | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: OrUnlimited | None = None
    profiler: NonEmptyStr | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    enable_checkpointing: bool | None = None
    sync_batchnorm: bool = False
    detect_anomaly: bool = False


# -------------------------------------------------------------------------- runs
@dataclass
class PathsConfig:
    # an empty path would be the current folder (or, joined, the root of the file system)
    root_dir: NonEmptyStr = MISSING
    data_dir: NonEmptyStr = MISSING
    log_dir: NonEmptyStr = MISSING
    output_dir: NonEmptyStr = MISSING


@dataclass
class TrainConfig:
    """``train.yaml``: what ``ptft-train`` runs; returns ``optimized_metric`` to sweepers."""

    task_name: NonEmptyStr = "train"
    seed: Seed = 42
    train: bool = True
    test: bool = True
    ckpt_path: ResumePath | None = None
    optimized_metric: NonEmptyStr | None = None
    data: Any = field(default_factory=open_node)
    model: Any = field(default_factory=open_node)
    trainer: Any = MISSING
    logger: Any = field(default_factory=open_node)
    callbacks: Any = field(default_factory=open_node)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvalConfig:
    """``eval.yaml``: ``ptft-eval ckpt_path=…`` tests a checkpoint and writes ``metrics.json``."""

    task_name: NonEmptyStr = "eval"
    seed: Seed = 42
    ckpt_path: CheckpointPath = MISSING
    # a data config to test on instead of the checkpoint's (empty: the checkpoint's)
    data: Any = field(default_factory=open_node)
    # your own classes the checkpoint names (model._target_, model.backbone._target_, …): a
    # checkpoint is rebuilt only from ptft's own code unless your config names them (SECURITY.md)
    model: Any = field(default_factory=open_node)
    trainer: Any = MISSING
    logger: Any = field(default_factory=open_node)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class ExportConfig:
    """``export.yaml``: ``ptft-export ckpt_path=… format=hf|safetensors|onnx|peft output=DIR``."""

    task_name: NonEmptyStr = "export"
    ckpt_path: CheckpointPath = MISSING
    # hf | safetensors | onnx | peft (checked by ptft.export.check)
    format: NonEmptyStr = "hf"
    output: NonEmptyStr = MISSING
    # replace a non-empty output directory (only once the new one is complete)
    overwrite: bool = False
    # format=onnx: compare onnxruntime's outputs with torch's on sample inputs
    check: bool = True
    # your own classes the checkpoint names, as in EvalConfig (SECURITY.md)
    model: Any = field(default_factory=open_node)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class GenerateConfig:
    """``generate.yaml``: ``ptft-generate ckpt_path=… prompt=…`` continues text with a causal LM."""

    task_name: NonEmptyStr = "generate"
    ckpt_path: CheckpointPath = MISSING
    prompt: str | None = None
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: NonNegativeInt = 64
    temperature: NonNegativeFloat = 0.0
    top_k: PositiveInt | None = None
    top_p: Fraction | None = None
    num_samples: PositiveInt = 1
    seed: Seed = 42
    device: NonEmptyStr = "cpu"
    # your own classes the checkpoint names, as in EvalConfig (SECURITY.md)
    model: Any = field(default_factory=open_node)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class PretrainArm:
    """One arm of the study's pretraining (``pretrain.arms.<name>``): a ``ptft-train`` config
    given as overrides, pretrained once; every task's pretrained methods run from it.

    ``pretrain.arms`` holds plain mappings, so that an arm can be added from the command line
    (``+pretrain.arms.<name>.overrides=[…]``: OmegaConf cannot add an entry to a mapping typed
    with a dataclass); ``ptft.study.runner.check`` checks each against this schema."""

    overrides: list[str] = field(default_factory=list)
    # a pretraining checkpoint or run directory to reuse instead of pretraining this arm
    pretrained: PretrainedPath | None = None
    # the pretrained methods run from this arm (null: every one a task lists)
    methods: list[str] | None = None
    # extra overrides per pretrained method from this arm, after the task's own: how to
    # fine-tune this backbone (its learning rate, say) is the arm's business
    method_overrides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PipelineStage:
    """``pretrain``: one unnamed arm (``overrides``, and the top-level ``pretrained`` to reuse
    a checkpoint), or named arms (``arms.<name>``: :class:`PretrainArm`), not both."""

    overrides: list[str] = field(default_factory=list)
    # name -> {overrides, pretrained, methods, method_overrides}; empty or null: the one
    # unnamed arm above
    arms: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class StudyTask:
    """One fine-tuning task of the study (``tasks.<name>``): a ``ptft-train`` config given as
    overrides, run with every method at every label fraction and seed."""

    overrides: list[str] = field(default_factory=list)
    # scratch | linear_probe | finetune | svc (images only)
    methods: list[str] = field(default_factory=lambda: ["scratch", "linear_probe", "finetune"])
    # extra overrides per method; how a method freezes or steps is the task's business
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    label_fractions: list[Fraction] = field(default_factory=lambda: [1.0])
    # logged metrics to report; the first is the headline (table and plot)
    metrics: list[str] = field(default_factory=lambda: ["test/acc"])
    seeds: PositiveInt = 1
    # fractions up to small_fraction get small_fraction_seeds seeds (null: as many as seeds)
    small_fraction: Probability = 0.0
    small_fraction_seeds: PositiveInt | None = None
    # the pretraining arms (pretrain.arms) its pretrained methods run from (null: every arm)
    arms: list[str] | None = None


@dataclass
class PipelineConfig:
    """``pipeline.yaml``: pretrain once per arm, then fine-tune every task per label fraction,
    method, arm and seed."""

    task_name: NonEmptyStr = "pipeline"
    pretrained: PretrainedPath | None = None
    pretrain: PipelineStage = field(default_factory=PipelineStage)
    tasks: dict[str, StudyTask] = field(default_factory=dict)
    svc: dict[str, Any] = field(default_factory=lambda: {"C": 10.0, "gamma": "scale"})
    paths: PathsConfig = field(default_factory=PathsConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "schema": {
        "train": TrainConfig,
        "eval": EvalConfig,
        "pipeline": PipelineConfig,
        "generate": GenerateConfig,
        "export": ExportConfig,
    },
    "schema/trainer": {"trainer": TrainerConfig},
    "schema/paths": {"paths": PathsConfig},
}
