"""Learning-rate schedules as picklable LambdaLR factors (their state is plain numbers)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_factor: float = 0.0
) -> LambdaLR:
    """Warmup over ``warmup_fraction`` of the run, then cosine decay (per optimizer step)."""
    return LambdaLR(optimizer, WarmupCosineFactor(round(warmup_fraction * total_steps), total_steps, min_factor))
