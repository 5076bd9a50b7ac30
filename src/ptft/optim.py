"""Optimizer parameter groups: discriminative (layer-wise) learning rates, selective
weight decay, and the linear learning-rate scaling rule.

* Discriminative fine-tuning (Howard & Ruder 2018, ULMFiT §3.2): each layer group trains
  at the rate of the group above divided by a factor (the paper's 2.6),
  ``η^{l−1} = η^l / factor``. As in ULMFiT (and BEiT's layer decay) the new task head is
  the top group at the configured rate; the backbone's top layer group gets
  ``lr / factor``, the one below ``lr / factor²``, and so on down to the input.
* Weight decay only on weights of two or more dimensions (linear and conv kernels, token
  embeddings); never on biases, norm scales and shifts, or learned position embeddings.
* Gradual unfreezing (ULMFiT §3.3): the head trains from the start, and the backbone's
  layer groups become trainable one per stage, from the top down: stages spread evenly over
  the first part of the run's optimizer steps (:func:`unfreeze_count`), or a number of
  epochs each (:func:`unfreeze_stage`); :func:`unfreeze_top` applies a stage (the
  fine-tuning task calls it when a step or an epoch starts).
* Linear scaling (Goyal et al. 2017 §2.1): ``lr = base_lr × global_batch / base_batch``,
  reached by a gradual warmup from ``base_lr`` (§2.2): :func:`scaled_lr` applies the rule to
  a fit, :func:`with_gradual_warmup` puts the warmup under the configured schedule.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ptft.config.bounds import NonNegativeFloat, NonNegativeInt, PositiveInt
from ptft.data.protocol import per_device_batch_size
from ptft.errors import ConfigError
from ptft.schedules import ConstantFactor, GradualWarmupLR

log = logging.getLogger(__name__)

#: ULMFiT's factor between the rates of neighbouring layer groups
ULMFIT_FACTOR = 2.6

# position_embedding, positional_embedding, pos_embed, pos_emb …
_POSITION = re.compile(r"pos(ition)?(al)?_?emb")


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies to the parameter called ``name``.

    Only weights of two or more dimensions decay: 1-D parameters are biases and the scales
    and shifts of batch/layer norms, which set offsets and scales rather than the model's
    capacity, and decaying them only fights the normalisation. A learned position
    embedding is 2-D but is an additive offset per position, a bias in all but shape, so
    it does not decay either (as in ViT/timm). Token embeddings do decay: they are a weight
    matrix like any other, and for a language model tied to the output layer they *are*
    that layer's weight (nanoGPT and BERT decay them too).
    """
    return param.ndim >= 2 and not _POSITION.search(name)


def layer_groups_of(backbone: nn.Module, key: str) -> list[nn.Module]:
    """The backbone's layer groups, bottom to top, checked for what ``key`` needs of them.

    Raises :class:`ConfigError` when the backbone lists none, or when some of its parameters
    are in no group (they would silently never train, or train at a guessed rate).
    """
    try:
        groups = list(backbone.layer_groups())  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        groups = []
    name = type(backbone).__name__
    if not groups:
        raise ConfigError(
            f"{key} needs a backbone with layer groups, and {name} lists none; "
            f"implement {name}.layer_groups() or choose another backbone"
        )
    grouped = {id(p) for group in groups for p in group.parameters()}
    missing = [n for n, p in backbone.named_parameters() if id(p) not in grouped]
    if missing:
        raise ConfigError(
            f"{key}: parameters of {name} in no layer group: {', '.join(missing)}; "
            f"add them to {name}.layer_groups()"
        )
    return groups


def layer_rates(lr: float, num_groups: int, factor: float) -> list[float]:
    """Rates of ``num_groups`` backbone layer groups, bottom to top, with the head at ``lr``
    above them: group ``i`` gets ``lr / factor^(num_groups − i)``."""
    return [lr / factor ** (num_groups - i) for i in range(num_groups)]


def param_groups(
    model: nn.Module,
    lr: float,
    discriminative_lr: float | None = None,
    include_frozen: bool = False,
    exclude: Iterable[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``model`` (which holds its backbone as ``model.backbone``).

    One rate for everything, or with ``discriminative_lr`` one rate per backbone layer group
    and ``lr`` for the rest (the head); each rate split into a decay group, which takes the
    optimizer's configured weight decay, and a ``weight_decay=0`` group. Frozen parameters
    are left out unless ``include_frozen`` (gradual unfreezing puts them in from the start:
    without a gradient the optimizer skips them, and unfreezing needs no new optimizer).
    ``exclude`` are parameters placed elsewhere (``BackboneModule.extra_param_groups``).
    Every other parameter lands in exactly one group; empty groups are dropped.
    """
    # rate groups: (name, lr), and the rate group of each backbone parameter
    rates: list[tuple[str, float]] = [("", lr)]
    rate_of: dict[int, int] = {}
    if discriminative_lr is not None and discriminative_lr != 1.0:
        groups = layer_groups_of(model.backbone, "model.discriminative_lr")
        rates = [
            (f"backbone.{i}", r)
            for i, r in enumerate(layer_rates(lr, len(groups), discriminative_lr))
        ]
        rates.append(("head", lr))
        for i, group in enumerate(groups):
            for p in group.parameters():
                # a parameter shared by two groups trains at the lower group's rate
                rate_of.setdefault(id(p), i)
    head = len(rates) - 1

    skip = {id(p) for p in exclude}
    members: dict[tuple[int, bool], list[nn.Parameter]] = {}
    # named_parameters() yields a shared (tied) parameter once, so none is in two groups
    for name, p in model.named_parameters():
        if id(p) in skip or not (p.requires_grad or include_frozen):
            continue
        members.setdefault((rate_of.get(id(p), head), decays(name, p)), []).append(p)

    out = []
    for index, (label, rate) in enumerate(rates):
        for decay in (True, False):
            params = members.get((index, decay))
            if not params:
                continue
            kind = "decay" if decay else "no_decay"
            group: dict[str, Any] = {
                "name": f"{label}/{kind}" if label else kind,
                "params": params,
                "lr": rate,
            }
            if not decay:
                group["weight_decay"] = 0.0
            out.append(group)
    return out


# ---------------------------------------------------------------- gradual unfreezing
# "We first unfreeze the last layer and fine-tune all unfrozen layers for one epoch. We then
# unfreeze the next lower frozen layer group and repeat" (Howard & Ruder 2018, §3.3). ULMFiT's
# last layer is the new head, so the head trains alone in the first stage. A stage of an
# epoch ties the schedule to the data set's size: when an epoch is one step (a few labels)
# everything is unfrozen after a handful of steps and the method is full fine-tuning, and
# when an epoch is most of the run the lower groups never train. So by default the stages
# divide the run's optimizer steps (:func:`unfreeze_count`); a stage per ``n`` epochs
# (:func:`unfreeze_stage`) is the paper's form. Either stage is a function of the loop's
# position alone (the optimizer step or the epoch, which a resume with ckpt_path= restores),
# so a resumed run picks up where it was; the frozen parameters are in the optimizer from the
# start (``param_groups(..., include_frozen=True)``: without a gradient the optimizer skips
# them), so unfreezing needs no new optimizer. A frozen group is kept in eval mode, so its
# batch-norm statistics stay as pretrained (as in the linear probe).
def unfreeze_span(total_steps: int, fraction: float) -> int:
    """The optimizer step from which every layer group trains: ``fraction`` of the run, at
    least 1 and at most the last step (so that the bottom group trains at least once)."""
    return max(1, min(total_steps - 1, round(fraction * total_steps)))


def unfreeze_count(step: int, total_steps: int, num_groups: int, fraction: float) -> int:
    """How many backbone layer groups train at optimizer step ``step`` (from 0) of
    ``total_steps``: none at first (the head alone), then one more every
    ``span / num_groups`` steps, all of them from step ``span`` (:func:`unfreeze_span`)."""
    # integer arithmetic: the k-th group from the top starts at step ceil(k * span / num_groups)
    return min(num_groups, step * num_groups // unfreeze_span(total_steps, fraction))


def unfreeze_stage(epoch: int, epochs_per_stage: int) -> int:
    """How many backbone layer groups train in ``epoch`` (one more per ``epochs_per_stage``)."""
    return epoch // epochs_per_stage


def frozen_groups(groups: Sequence[nn.Module]) -> list[nn.Module]:
    """The groups none of whose parameters train."""
    return [g for g in groups if not any(p.requires_grad for p in g.parameters())]


def unfreeze_top(groups: Sequence[nn.Module], count: int, training: bool = True) -> None:
    """Make the top ``count`` groups trainable and freeze the others; frozen groups go to
    eval mode, trainable ones to ``training`` (the module's mode)."""
    first_trainable = len(groups) - max(0, count)
    # freeze first, then unfreeze: a parameter shared with a trainable group trains
    for group in groups[:first_trainable]:
        group.requires_grad_(False)
        group.eval()
    for group in groups[first_trainable:]:
        group.requires_grad_(True)
        group.train(training)


# ---------------------------------------------------------------- linear scaling rule
class LRScalingConfig(TypedDict, total=False):
    """``model.lr_scaling``: on unless ``enabled`` is false; the defaults are
    :class:`LRScaling`'s."""

    enabled: bool
    base_batch: PositiveInt | None
    warmup_epochs: NonNegativeFloat
    warmup_steps: NonNegativeInt | None


@dataclass(frozen=True)
class LRScaling:
    """Goyal et al. 2017's linear scaling rule with gradual warmup, as configured.

    ``base_batch`` is the batch size ``model.optimizer.lr`` was tuned for; the warmup
    lasts ``warmup_steps`` optimizer steps when given, else ``warmup_epochs`` epochs.
    """

    base_batch: int
    warmup_epochs: float = 5.0  # the paper's
    warmup_steps: int | None = None

    @classmethod
    def from_config(cls, config: LRScalingConfig | Mapping[str, Any] | None) -> LRScaling | None:
        """``model.lr_scaling`` checked: None when it is off (None, or ``enabled`` false; a
        mapping without ``enabled`` is on), else a complete rule; ConfigError otherwise."""
        if config is None:
            return None
        config = dict(config)
        unknown = set(config) - set(LRScalingConfig.__annotations__)
        if unknown:
            raise ConfigError(
                f"model.lr_scaling: unknown keys {sorted(unknown)}; "
                f"valid keys: {', '.join(LRScalingConfig.__annotations__)}"
            )
        if not config.get("enabled", True):
            return None
        base_batch = config.get("base_batch")
        if not base_batch or base_batch < 1:
            raise ConfigError(
                "model.lr_scaling.base_batch is not set: give the batch size model.optimizer.lr "
                "was tuned for (e.g. model.lr_scaling.base_batch=256)"
            )
        warmup_epochs = config.get("warmup_epochs", cls.warmup_epochs) or 0.0
        warmup_steps = config.get("warmup_steps")
        if warmup_epochs < 0 or (warmup_steps is not None and warmup_steps < 0):
            raise ConfigError(
                "model.lr_scaling.warmup_epochs and model.lr_scaling.warmup_steps must be >= 0"
            )
        return cls(
            int(base_batch),
            float(warmup_epochs),
            None if warmup_steps is None else int(warmup_steps),
        )

    def global_batch(
        self, per_device_batch: int, world_size: int, accumulate_grad_batches: int
    ) -> int:
        """Examples per optimizer step: every device of every node, times the accumulated
        batches."""
        return per_device_batch * world_size * accumulate_grad_batches

    def scale(self, global_batch: int) -> float:
        """``k = global_batch / base_batch``; the effective rate is ``k`` times the base rate."""
        return global_batch / self.base_batch

    def warmup_length(self, steps_per_epoch: int) -> int:
        """The warmup in optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_epochs * steps_per_epoch)

    @staticmethod
    def start_factor(k: float) -> float:
        """Where the warmup starts, as a fraction of the scaled rate ``kη``: at the un-scaled
        rate ``η``, i.e. ``1/k``. A scale ``k ≤ 1`` needs no warmup (factor 1): the rule
        lowers the rate, and warming "up" from the higher base rate would defeat it."""
        return min(1.0, 1.0 / k)


def steps_per_epoch(num_training_batches: float, accumulate_grad_batches: int) -> int | None:
    """Optimizer steps per epoch, counted as Lightning's ``estimated_stepping_batches`` does
    (None for an iterable data set of unknown length)."""
    if math.isinf(num_training_batches):
        return None
    return math.ceil(num_training_batches / accumulate_grad_batches)


@dataclass(frozen=True)
class ScaledLR:
    """The linear scaling rule applied to one fit: the factor ``k`` of every rate, the gradual
    warmup in optimizer steps, and the values used, to be logged (empty when the rule is off)."""

    scale: float = 1.0
    warmup_steps: int = 0
    report: dict[str, float] = field(default_factory=dict)

    @property
    def start_factor(self) -> float:
        """Where the warmup starts, as a fraction of the scaled rate
        (:meth:`LRScaling.start_factor`)."""
        return LRScaling.start_factor(self.scale)


def scaled_lr(rule: LRScaling, trainer: Any, base_lr: float) -> ScaledLR:
    """Goyal et al.'s rule for this fit of ``trainer``: ``k = global_batch / base_batch`` and
    the warmup (a rule that is off is ``ScaledLR()``). The trainer supplies the facts: the
    per-device batch size (``trainer.datamodule.batch_size``), ``world_size``,
    ``accumulate_grad_batches``, and for a warmup in epochs the training batches per epoch;
    rank zero logs the arithmetic."""
    per_device = per_device_batch_size(getattr(trainer, "datamodule", None))
    if not per_device:
        raise ConfigError(
            "model.lr_scaling needs the per-device batch size, and the datamodule has no "
            "batch_size; fit with a ptft datamodule or set model.lr_scaling.enabled=false"
        )
    accumulate = int(trainer.accumulate_grad_batches)
    global_batch = rule.global_batch(int(per_device), int(trainer.world_size), accumulate)
    k = rule.scale(global_batch)
    warmup = 0
    if rule.warmup_steps is not None or rule.warmup_epochs:
        # Lightning counts the training batches here
        trainer.estimated_stepping_batches  # noqa: B018
        per_epoch = steps_per_epoch(trainer.num_training_batches, accumulate)
        if per_epoch is None and rule.warmup_steps is None:
            raise ConfigError(
                "model.lr_scaling.warmup_epochs: the training data has no length, so an epoch "
                "has no known number of steps; give model.lr_scaling.warmup_steps"
            )
        warmup = rule.warmup_length(per_epoch or 0)
    report = {
        "lr/base": base_lr,
        "lr/effective": base_lr * k,
        "lr/scale": k,
        "lr/global_batch": float(global_batch),
        "lr/warmup_steps": float(warmup),
    }
    if trainer.is_global_zero:
        log.info(
            "linear lr scaling (Goyal et al. 2017): global batch %d = %d per device x %d devices "
            "x %d accumulated; lr = %g x %d / %d = %g, warmup from %g over %d steps",
            global_batch,
            per_device,
            trainer.world_size,
            accumulate,
            base_lr,
            global_batch,
            rule.base_batch,
            base_lr * k,
            base_lr * k * rule.start_factor(k),
            warmup,
        )
    return ScaledLR(k, warmup, report)


def with_gradual_warmup(
    optimizer: Optimizer, scheduler: Any, warmup_steps: int, start_factor: float
) -> GradualWarmupLR:
    """The configured schedule (or a constant rate) under Goyal et al.'s gradual warmup."""
    if scheduler is not None and not isinstance(scheduler, LambdaLR):
        raise ConfigError(
            "model.lr_scaling warmup needs a ptft.schedules scheduler (a LambdaLR), not "
            f"{type(scheduler).__name__}; set model.lr_scaling.warmup_steps=0 or change "
            "model/scheduler"
        )
    factors = scheduler.lr_lambdas if scheduler is not None else ConstantFactor()
    return GradualWarmupLR(optimizer, factors, warmup_steps, start_factor)
