"""Collect a classifier's test predictions: target, predicted class and class probabilities.

The classifier's ``test_step`` returns its logits; this callback keeps them (softmaxed)
with the batch's targets, so ``ptft-eval`` can save the predictions and compute its report
from exactly what the test loop scored. One process only: ``ptft-eval`` tests on one device.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


class TestPredictions(L.Callback):
    """After ``trainer.test``: ``target`` ``(N,)``, ``predicted`` ``(N,)``, ``probabilities``
    ``(N, C)``."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self) -> None:
        self._targets: list[Tensor] = []
        self._logits: list[Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._targets, self._logits = [], []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"{type(pl_module).__name__}.test_step must return its logits to save predictions"
            )
        self._targets.append(batch[1].detach().cpu())
        self._logits.append(outputs.detach().float().cpu())

    @property
    def target(self) -> Tensor:
        return torch.cat(self._targets) if self._targets else torch.empty(0, dtype=torch.long)

    @property
    def logits(self) -> Tensor:
        return torch.cat(self._logits) if self._logits else torch.empty(0, 0)

    @property
    def predicted(self) -> Tensor:
        # the argmax of the logits, as the module's own torchmetrics take it
        return self.logits.argmax(dim=1)

    @property
    def probabilities(self) -> Tensor:
        return self.logits.softmax(dim=1)
