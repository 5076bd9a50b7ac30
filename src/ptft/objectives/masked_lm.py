"""BERT-style masked language modelling with masks drawn per batch on the device (Devlin et al.
2019).

Training draws new masks every batch from a generator seeded by ``mask_seed``, the epoch and the
process rank (each epoch and process sees different masks, reproducibly). Validation and test
reseed at the start of each epoch, so every evaluation scores the same masked positions and
``val/loss`` is comparable across epochs. The loss counts masked positions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ptft.data.masking import mask_tokens
from ptft.modules.language_model import LanguageModel


class MaskedLM(LanguageModel):
    """Predict the original tokens at the ~15% positions ``mask_tokens`` chose in ``item[:-1]``."""

    causal = False
    accuracy_name = "masked_acc"

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        mask_prob: float = 0.15,
        mask_seed: int = 0,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.mask_prob = mask_prob
        self.mask_seed = mask_seed
        self.generators: dict[str, torch.Generator] = {}

    def _reseed(self, stage: str, offset: int) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.mask_seed * 1_000_003 + offset)
        self.generators[stage] = generator

    def on_train_epoch_start(self) -> None:
        self._reseed("train", 1 + self.current_epoch * 1009 + self.global_rank * 7)

    def on_validation_epoch_start(self) -> None:
        self._reseed("val", -1 - self.global_rank)

    def on_test_epoch_start(self) -> None:
        self._reseed("test", -1001 - self.global_rank)

    def logits_and_labels(self, batch: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        if stage not in self.generators:
            self._reseed(stage, 0)
        tokens = batch[:, :-1]  # the datamodule serves block_size + 1 tokens for either objective
        inputs, labels = mask_tokens(
            tokens, self.backbone.vocab_size, self.generators[stage], self.mask_prob
        )
        return self(inputs), labels
