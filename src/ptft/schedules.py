"""Learning-rate schedules as picklable LambdaLR factors (their state is plain numbers).

Each factory takes the optimizer and ``total_steps`` (optimizer steps of the whole run,
from ``configure_optimizers``) and returns a :class:`~torch.optim.lr_scheduler.LambdaLR`
stepped once per optimizer step. The factor multiplies every parameter group's own base
rate, so layer-wise (discriminative) rates keep their ratios along the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ptft.config.bounds import NonNegativeInt, Probability, Range


class WarmupCosineFactor:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_factor``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


class SlantedTriangularFactor:
    """Slanted triangular learning rates (Howard & Ruder 2018, ULMFiT eq. 3).

    With ``T`` steps, ``cut = ⌊T·cut_frac⌋``::

        p = t / cut                                      if t < cut
        p = 1 − (t − cut) / (cut · (1/cut_frac − 1))     otherwise
        η_t = η_max · (1 + p·(ratio − 1)) / ratio

    a short linear rise from ``η_max/ratio`` to ``η_max`` over the first ``cut_frac`` of
    the run, then a long linear decay back to ``η_max/ratio`` at ``t = T``.
    """

    def __init__(self, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> None:
        if not 0.0 < cut_frac < 1.0 or ratio < 1.0:
            raise ValueError(
                "slanted_triangular needs 0 < cut_frac < 1 and ratio >= 1, "
                f"got {cut_frac=}, {ratio=}"
            )
        self.total_steps = max(1, int(total_steps))
        self.cut_frac = float(cut_frac)
        self.ratio = float(ratio)
        # the paper's floor; at least one step so a very short run does not divide by zero
        self.cut = max(1, math.floor(self.total_steps * self.cut_frac))

    def __call__(self, step: int) -> float:
        if step < self.cut:
            p = step / self.cut
        else:
            p = 1.0 - (step - self.cut) / (self.cut * (1.0 / self.cut_frac - 1.0))
        # the formula goes below η_max/ratio (and then negative) past T: hold the floor there
        p = max(0.0, p)
        return (1.0 + p * (self.ratio - 1.0)) / self.ratio


class ConstantFactor:
    """1 after an optional linear warmup over ``warmup_steps`` (counted as in warmup_cosine)."""

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 1.0


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: Probability = 0.05,
    min_factor: Probability = 0.0,
) -> LambdaLR:
    """Warmup over ``warmup_fraction`` of the run, then cosine decay (per optimizer step)."""
    return LambdaLR(
        optimizer, WarmupCosineFactor(round(warmup_fraction * total_steps), total_steps, min_factor)
    )


def slanted_triangular(
    optimizer: Optimizer,
    total_steps: int,
    cut_frac: Annotated[float, Range(gt=0, lt=1)] = 0.1,
    ratio: Annotated[float, Range(ge=1)] = 32.0,
) -> LambdaLR:
    """ULMFiT's slanted triangular schedule over ``total_steps`` (defaults from the paper)."""
    return LambdaLR(optimizer, SlantedTriangularFactor(total_steps, cut_frac, ratio))


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: NonNegativeInt = 0) -> LambdaLR:
    """The configured rate throughout, after ``warmup_steps`` of linear warmup (``total_steps``
    is taken for a uniform signature and not needed)."""
    return LambdaLR(optimizer, ConstantFactor(warmup_steps))


def gradual_warmup_factor(step: int, warmup_steps: int, start_factor: float) -> float:
    """Goyal et al. 2017 §2.2, gradual warmup: the rate rises by a constant amount per step
    from ``start_factor·η̂`` (the un-scaled rate η, so ``start_factor = η/η̂ = 1/k``) at step 0
    to ``η̂ = kη`` at ``warmup_steps``: ``η_t = η + (kη − η)·t/W``, as a factor of ``η̂``."""
    if step >= warmup_steps:
        return 1.0
    return start_factor + (1.0 - start_factor) * step / warmup_steps


class GradualWarmupLR(LambdaLR):
    """A LambdaLR whose factors are multiplied by Goyal et al.'s gradual warmup.

    The linear-scaling rule's warmup (:func:`gradual_warmup_factor`) sits on top of the
    configured schedule: ``η_t = η̂ · schedule(t) · warmup(t)``; past the warmup the schedule
    runs as configured ("then go back to the original learning rate schedule", Goyal et al.).
    The warmup's numbers are plain attributes, so the state dict stays plain numbers.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        warmup_steps: int,
        start_factor: float,
    ) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.start_factor = float(start_factor)
        super().__init__(
            optimizer, list(lr_lambda) if isinstance(lr_lambda, Sequence) else lr_lambda
        )

    def get_lr(self) -> list[float]:
        ramp = gradual_warmup_factor(self.last_epoch, self.warmup_steps, self.start_factor)
        return [lr * ramp for lr in super().get_lr()]
