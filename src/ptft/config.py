"""Structured-config schemas: typed dataclasses that Hydra merges under the YAML files.

Each YAML in ``conf/`` starts from one of these schemas (its defaults list names
``/schema/<group>@_here_: <name>``), so a misspelled key or a value of the wrong type given on the
command line fails while the config is composed, with a message naming the key,
before torch or Lightning are even imported. ``register()`` puts them in Hydra's
ConfigStore; the entry points call it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any  # noqa: UP035 -- OmegaConf needs typing.Optional on 3.10

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ruff: noqa: UP007 -- OmegaConf reads these annotations at runtime


# --------------------------------------------------------------------------- data
@dataclass
class ImageDataConfig:
    _target_: str = MISSING
    input_shape: list[int] = MISSING
    num_classes: int = MISSING
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    label_fraction: float = 1.0
    subset_seed: int = 0


@dataclass
class TorchvisionDataConfig(ImageDataConfig):
    name: str = MISSING
    root: str = MISSING
    download: bool = False


@dataclass
class TextDataConfig:
    """Packed token blocks of the standard-library docstrings (``ptft.data.text``)."""

    _target_: str = "ptft.data.text.PydocTextDataModule"
    cache_dir: str = MISSING
    input_shape: list[int] = MISSING
    vocab_size: int = 8192
    block_size: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    split_seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    tokenizer: str | None = None


@dataclass
class TextFilesDataConfig(TextDataConfig):
    """The user's ``.txt`` files as packed token blocks (``ptft.data.text_files``)."""

    _target_: str = "ptft.data.text_files.TextFilesDataModule"
    files: str = MISSING
    split_paragraphs: bool = False


@dataclass
class HFTextDataConfig(TextDataConfig):
    """A Hugging Face ``datasets`` text column as packed token blocks (``ptft.data.hf_text``)."""

    _target_: str = "ptft.data.hf_text.HFTextDataModule"
    path: str = MISSING
    name: str | None = None
    data_files: Any = None  # a path, a list of paths, or {split: path(s)}
    text_column: str = "text"
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "val": "validation", "test": "test"}
    )


@dataclass
class LabelledTextDataConfig:
    """The labelled docstring tasks (``ptft.data.pydoc_tasks``): shared keys."""

    _target_: str = MISSING
    cache_dir: str = MISSING
    input_shape: list[int] = MISSING
    vocab_size: int = 8192
    max_length: int = 128
    tokenizer: str | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    split_seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    label_fraction: float = 1.0
    subset_seed: int = 0


@dataclass
class PydocPackageDataConfig(LabelledTextDataConfig):
    _target_: str = "ptft.data.pydoc_tasks.PydocPackageDataModule"
    num_classes: int = 10


@dataclass
class PydocNamesDataConfig(LabelledTextDataConfig):
    _target_: str = "ptft.data.pydoc_tasks.PydocNamesDataModule"


# -------------------------------------------------------------------------- model
@dataclass
class CNNConfig:
    _target_: str = "ptft.nn.cnn.CNN"
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    dropout: float = 0.0


@dataclass
class MLPConfig:
    _target_: str = "ptft.nn.mlp.MLP"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0


@dataclass
class TransformerConfig:
    _target_: str = "ptft.nn.transformer.Transformer"
    vocab_size: int = MISSING
    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    max_positions: int = 512
    positions: str = "sinusoidal"
    causal: bool = True
    pad_token_id: int | None = 0


@dataclass
class OptimizerConfig:
    """A ``torch.optim`` class completed with the parameters in ``configure_optimizers``.

    Fields left ``null`` take the optimizer's own default (SGD has no betas, AdamW no momentum).
    """

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float | None = None
    betas: list[float] | None = None
    eps: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None


# Schedulers: the options of ``model/scheduler`` (``conf/model/scheduler/``); each is a
# ``ptft.schedules`` factory completed with the optimizer and ``total_steps``.
@dataclass
class WarmupCosineConfig:
    _target_: str = "ptft.schedules.warmup_cosine"
    _partial_: bool = True
    warmup_fraction: float = 0.05
    min_factor: float = 0.0


@dataclass
class SlantedTriangularConfig:
    """Howard & Ruder 2018 (ULMFiT): the paper's ``cut_frac`` and ``ratio``."""

    _target_: str = "ptft.schedules.slanted_triangular"
    _partial_: bool = True
    cut_frac: float = 0.1
    ratio: float = 32.0


@dataclass
class ConstantScheduleConfig:
    _target_: str = "ptft.schedules.constant"
    _partial_: bool = True
    warmup_steps: int = 0


@dataclass
class LRScalingConfig:
    """Goyal et al. 2017: when ``enabled``, ``lr = model.optimizer.lr × global batch / base_batch``,
    reached by a linear warmup from ``model.optimizer.lr`` over ``warmup_steps`` steps when set,
    else ``warmup_epochs`` epochs. The global batch counts devices, nodes and accumulation.
    A recipe can set ``base_batch`` (the batch its rate was tuned for) and leave the switch
    to the user, as MMEngine's ``auto_scale_lr`` does."""

    enabled: bool = False
    base_batch: int | None = None
    warmup_epochs: float = 5.0
    warmup_steps: int | None = None


@dataclass
class AugmentConfig:
    degrees: float = 12.0
    translate: float = 0.1
    scale: list[float] = field(default_factory=lambda: [0.85, 1.25])
    shear: float = 8.0
    noise_std: float = 0.05
    erase_p: float = 0.25
    erase_scale: list[float] = field(default_factory=lambda: [0.02, 0.12])
    p: float = 1.0


@dataclass
class ModelConfig:
    """Keys every model has. ``monitor``/``monitor_mode`` drive checkpointing and sweeps;
    ``pretrained`` is the handoff. The rest go to the module's constructor."""

    _target_: str = MISSING
    input_shape: list[int] = MISSING
    backbone: Any = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # an option of model/scheduler, typed by its own schema; null: the optimizer's rate throughout
    scheduler: Any = None
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    pretrained: str | None = None
    # torch.compile the backbone (in place: checkpoints keep their keys)
    compile: bool = False


@dataclass
class KNNMonitorConfig:
    """``model.knn``: the online kNN accuracy of the backbone's features (``val/knn_acc``)."""

    k: int = 20
    # votes weighted by exp(cosine similarity / temperature); null: one vote per neighbour
    temperature: float | None = 0.07


@dataclass
class OnlineProbeConfig:
    """``model.online_probe``: a linear layer on detached features (``val/probe_acc``).

    A switch rather than a null default: OmegaConf cannot merge ``{lr: …}`` from the command
    line into a null node, so ``model.online_probe.enabled=true`` turns the probe on."""

    enabled: bool = False
    lr: float = 1e-2


@dataclass
class AutoencoderConfig(ModelConfig):
    decoder_hidden_dims: list[int] = field(default_factory=lambda: [256])
    num_logged_images: int = 32
    # representation monitors (labels for monitoring only; null turns one off)
    num_classes: int | None = None
    knn: KNNMonitorConfig | None = field(default_factory=KNNMonitorConfig)
    online_probe: OnlineProbeConfig | None = field(default_factory=OnlineProbeConfig)


@dataclass
class SimCLRConfig(ModelConfig):
    temperature: float = 0.2
    projection_hidden_dim: int = 256
    projection_dim: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # representation monitors (labels for monitoring only; null turns one off)
    num_classes: int | None = None
    knn: KNNMonitorConfig | None = field(default_factory=KNNMonitorConfig)
    online_probe: OnlineProbeConfig | None = field(default_factory=OnlineProbeConfig)


@dataclass
class FinetuneConfig(ModelConfig):
    """The fine-tuning methods of the classification tasks (README: Fine-tuning methods)."""

    num_classes: int = MISSING
    # full | linear_probe | gradual_unfreeze
    finetune: str = "full"
    # gradual_unfreeze: epochs per stage (one more backbone layer group trains after each)
    unfreeze_epochs: int = 1
    # rate of a backbone layer group = rate of the group above / this (ULMFiT: 2.6); null: one rate
    discriminative_lr: float | None = None
    lr_scaling: LRScalingConfig = field(default_factory=LRScalingConfig)


@dataclass
class ClassifierConfig(FinetuneConfig):
    augment: AugmentConfig | None = None
    head_dropout: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class SequenceClassifierConfig(FinetuneConfig):
    pooling: str = "auto"
    head_dropout: float = 0.1
    label_smoothing: float = 0.0


@dataclass
class SequenceGeneratorConfig(ModelConfig):
    max_new_tokens: int = 24


@dataclass
class CausalLMConfig(ModelConfig):
    sample_prompts: list[str] = field(default_factory=lambda: ["Return the", "This module"])
    sample_tokens: int = 32


@dataclass
class MaskedLMConfig(ModelConfig):
    mask_prob: float = 0.15
    mask_seed: int = 0


# ------------------------------------------------------------------------ trainer
@dataclass
class TrainerConfig:
    """The ``lightning.Trainer`` arguments ptft configs use; others can be added with ``+trainer.x=``."""

    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: str | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    min_epochs: int | None = None
    max_epochs: int | None = None
    max_steps: int = -1
    max_time: str | None = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    log_every_n_steps: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int | None = None
    profiler: str | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    enable_checkpointing: bool | None = None
    sync_batchnorm: bool = False
    detect_anomaly: bool = False


# -------------------------------------------------------------------------- runs
@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    """``train.yaml``: what ``ptft-train`` runs; returns ``optimized_metric`` to sweepers."""

    task_name: str = "train"
    seed: int = 42
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    optimized_metric: str | None = None
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvalConfig:
    """``eval.yaml``: ``ptft-eval ckpt_path=…`` tests a checkpoint and writes ``metrics.json``."""

    task_name: str = "eval"
    seed: int = 42
    ckpt_path: str = MISSING
    data: Any = None
    trainer: Any = MISSING
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class GenerateConfig:
    """``generate.yaml``: ``ptft-generate ckpt_path=… prompt=…`` continues text with a causal LM."""

    task_name: str = "generate"
    ckpt_path: str = MISSING
    prompt: str | None = None
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    num_samples: int = 1
    seed: int = 42
    device: str = "cpu"
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class PipelineStage:
    overrides: list[str] = field(default_factory=list)


@dataclass
class StudyTask:
    """One fine-tuning task of the study (``tasks.<name>``): a ``ptft-train`` config given as
    overrides, run with every method at every label fraction and seed."""

    overrides: list[str] = field(default_factory=list)
    # scratch | linear_probe | finetune | svc (images only)
    methods: list[str] = field(default_factory=lambda: ["scratch", "linear_probe", "finetune"])
    # extra overrides per method; how a method freezes or steps is the task's business
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    # logged metrics to report; the first is the headline (table and plot)
    metrics: list[str] = field(default_factory=lambda: ["test/acc"])
    seeds: int = 1
    # fractions up to small_fraction get small_fraction_seeds seeds (null: as many as seeds)
    small_fraction: float = 0.0
    small_fraction_seeds: int | None = None


@dataclass
class PipelineConfig:
    """``pipeline.yaml``: pretrain once, then fine-tune every task per label fraction, method and seed."""

    task_name: str = "pipeline"
    pretrained: str | None = None
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
    },
    "schema/data": {"image": ImageDataConfig, "torchvision": TorchvisionDataConfig, "text": TextDataConfig,
                    "text_files": TextFilesDataConfig, "hf_text": HFTextDataConfig,
                    "pydoc_package": PydocPackageDataConfig, "pydoc_names": PydocNamesDataConfig},
    "schema/model": {
        "sequence_classifier": SequenceClassifierConfig,
        "sequence_generator": SequenceGeneratorConfig,
        "autoencoder": AutoencoderConfig,
        "simclr": SimCLRConfig,
        "classifier": ClassifierConfig,
        "causal_lm": CausalLMConfig,
        "masked_lm": MaskedLMConfig,
    },
    "schema/backbone": {"cnn": CNNConfig, "mlp": MLPConfig, "transformer": TransformerConfig},
    "schema/scheduler": {"warmup_cosine": WarmupCosineConfig, "slanted_triangular": SlantedTriangularConfig,
                         "constant": ConstantScheduleConfig},
    "schema/trainer": {"trainer": TrainerConfig},
    "schema/paths": {"paths": PathsConfig},
}


def register() -> None:
    """Put every schema in Hydra's ConfigStore and ptft's resolvers in OmegaConf (idempotent)."""
    from ptft import resolvers

    resolvers.register()
    cs = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)
