"""Sequence generation: fine-tune a causal LM on prompt → target pairs.

The whole pretrained language model carries over (the output layer is tied to the token
embedding, so ``model.pretrained`` hands over the head too). The loss is the log-likelihood
of the target tokens only; validation and test also decode every prompt greedily and count
an exact match when the decode, up to its ``<eos>``, equals the target (``exact_match``, and
``exact_count`` of them), and score the decoded text's words against the target's
(``word_f1``, :mod:`ptft.tasks.word_f1`; with the datamodule's tokenizer).

``finetune="full"`` trains everything; ``finetune="lora"`` (Hu et al. 2021) trains only
low-rank adapters in the backbone (``lora``: :class:`ptft.interop.lora.LoRAConfig`): the
embeddings and norms stay frozen, and so does the output layer, which *is* the token embedding.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from ptft.config.bounds import PositiveInt, check_arguments
from ptft.data.masking import IGNORE_INDEX
from ptft.data.tokenizer import load_tokenizer, prompt_prefix, specials_of
from ptft.errors import ConfigError
from ptft.interop.lora import LoRAConfig
from ptft.modules.language_model import LanguageModel
from ptft.nn.decoding import generate
from ptft.tasks.word_f1 import word_f1

GeneratorFinetuneMode = Literal["full", "lora"]


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
        finetune: GeneratorFinetuneMode = "full",
        lora: LoRAConfig | None = None,
    ) -> None:
        modes = typing.get_args(GeneratorFinetuneMode)
        if finetune not in modes:
            raise ConfigError(f"model.finetune='{finetune}' is not one of {list(modes)}")
        check_arguments(SequenceGenerator.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.max_new_tokens = max_new_tokens
        self.finetune = finetune
        if finetune == "lora":
            # the tied output layer is the token embedding: frozen with the rest of the backbone
            self.configure_lora(lora)
        self.exact_match = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.exact_count = nn.ModuleDict({s: SumMetric() for s in ("val", "test")})
        self.word_f1 = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        #: the datamodule's tokenizer, read once when an evaluation first decodes
        self._decoder: Tokenizer | None = None

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The tokenizer's eos (a target ends with it)."""
        eos = specials_of(self.backbone).eos
        return () if eos is None else (eos,)

    def prompt_ids(self, tokenizer: Tokenizer, text: str) -> list[int]:
        """A prompt framed as in training (:func:`ptft.data.tokenizer.prompt_prefix`): ``<eos>
        text <sep>``; the model writes the target."""
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return prompt_prefix(specials_of(self.backbone), ids)

    def input_tokens(self, batch: Sequence[Tensor]) -> Tensor:
        """The tokens ``(B, T)`` of a ``(tokens, labels)`` batch."""
        return batch[0]

    def logits_and_labels(self, batch: Sequence[Tensor], stage: str) -> tuple[Tensor, Tensor]:
        tokens, labels = batch
        return self(tokens), labels

    def training_flops(self, batch: Sequence[Tensor]) -> float | None:
        """The LM's analytic count when everything trains; with LoRA, None: measured, since the
        backward computes weight gradients for the adapters only."""
        if self.finetune != "full":
            return None
        return super().training_flops(batch)

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> None:
        super()._eval_step(batch, stage)
        prompts, targets = split_pairs(*batch)
        decoded = generate(
            self, prompts, self.max_new_tokens, temperature=0.0, stop_ids=self.stop_ids
        )
        hits = torch.tensor([float(d == t) for d, t in zip(decoded, targets, strict=True)])
        self.exact_match[stage].update(hits)
        self.exact_count[stage].update(hits)
        tokenizer = self.decoder()
        if tokenizer is not None:
            scores = [
                word_f1(
                    tokenizer.decode(self.without_stop(d)), tokenizer.decode(self.without_stop(t))
                )
                for d, t in zip(decoded, targets, strict=True)
            ]
            self.word_f1[stage].update(torch.tensor(scores))

    def decoder(self) -> Tokenizer | None:
        """The datamodule's tokenizer (None without one: no ``word_f1`` then)."""
        if self._decoder is None:
            path = self.tokenizer_path()
            self._decoder = load_tokenizer(path) if path is not None else None
        return self._decoder

    def without_stop(self, ids: list[int]) -> list[int]:
        """``ids`` up to their first stop id (the target's ``<eos>``)."""
        stops = set(self.stop_ids)
        return next((ids[:i] for i, t in enumerate(ids) if t in stops), ids)

    def _log_epoch(self, stage: str) -> None:
        super()._log_epoch(stage)
        self.log(f"{stage}/exact_match", self.exact_match[stage].compute())
        self.log(f"{stage}/exact_count", self.exact_count[stage].compute())
        self.exact_match[stage].reset()
        self.exact_count[stage].reset()
        if self.word_f1[stage].update_count:
            self.log(f"{stage}/word_f1", self.word_f1[stage].compute())
        self.word_f1[stage].reset()
