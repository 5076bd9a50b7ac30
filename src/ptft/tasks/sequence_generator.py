"""Sequence generation: fine-tune a causal LM on prompt → target pairs.

The whole pretrained language model carries over (the output layer is tied to the token
embedding, so ``model.pretrained`` hands over the head too). The loss is the log-likelihood
of the target tokens only; validation and test also decode every prompt greedily and count
an exact match when the decode, up to its ``<eos>``, equals the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ptft.config.bounds import PositiveInt, check_arguments
from ptft.data.masking import IGNORE_INDEX
from ptft.data.tokenizer import EOS_ID, SEP_ID
from ptft.modules.language_model import LanguageModel
from ptft.nn.decoding import generate


def split_pairs(tokens: Tensor, labels: Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts (everything up to and including ``<sep>``) and targets (with ``<eos>``) of a
    batch."""
    prompts, targets = [], []
    for row, row_labels in zip(tokens.tolist(), labels.tolist(), strict=True):
        scored = [i for i, y in enumerate(row_labels) if y != IGNORE_INDEX]
        prompts.append(row[: scored[0] + 1])
        targets.append([row_labels[i] for i in scored])
    return prompts, targets


class SequenceGenerator(LanguageModel):
    """Causal LM trained on ``(tokens, labels)`` batches whose labels score the target only."""

    causal = True
    accuracy_name = "token_acc"

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        max_new_tokens: PositiveInt = 24,
    ) -> None:
        check_arguments(SequenceGenerator.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.max_new_tokens = max_new_tokens
        self.exact_match = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (EOS_ID,)

    def prompt_ids(self, tokenizer: Tokenizer, text: str) -> list[int]:
        """A prompt framed as in training: ``<eos> text <sep>``; the model writes the target."""
        return [EOS_ID, *tokenizer.encode(text, add_special_tokens=False).ids, SEP_ID]

    def input_tokens(self, batch: Sequence[Tensor]) -> Tensor:
        """The tokens ``(B, T)`` of a ``(tokens, labels)`` batch."""
        return batch[0]

    def logits_and_labels(self, batch: Sequence[Tensor], stage: str) -> tuple[Tensor, Tensor]:
        tokens, labels = batch
        return self(tokens), labels

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> None:
        super()._eval_step(batch, stage)
        prompts, targets = split_pairs(*batch)
        decoded = generate(
            self, prompts, self.max_new_tokens, temperature=0.0, stop_ids=self.stop_ids
        )
        hits = torch.tensor([float(d == t) for d, t in zip(decoded, targets, strict=True)])
        self.exact_match[stage].update(hits)

    def _log_epoch(self, stage: str) -> None:
        super()._log_epoch(stage)
        self.log(f"{stage}/exact_match", self.exact_match[stage].compute())
        self.exact_match[stage].reset()
