"""What the causal and the masked LM share: a Transformer backbone, an output head tied to its
token embedding, token-weighted loss and perplexity (the run record saves the tokenizer with each
checkpoint).

A subclass only says how a batch of token blocks becomes ``(logits, labels)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ptft.data import protocol
from ptft.errors import ConfigError
from ptft.modules.backbone_module import BackboneModule
from ptft.objectives.losses import token_cross_entropy, token_loss


class LanguageModel(BackboneModule):
    """A Transformer LM whose output layer reuses the backbone's ``output_weight`` (the token
    embedding, or an untied matrix the backbone holds): no weight of its own."""

    #: the attention the objective needs: True for next-token prediction, False for masked LM
    causal: ClassVar[bool]
    #: name of the logged accuracy of the scored tokens (``{stage}/{name}``), or None
    accuracy_name: ClassVar[str | None] = None

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        if not hasattr(self.backbone, "token_embedding"):
            raise ConfigError(
                f"{type(self).__name__} needs a token backbone; use model/backbone=transformer"
            )
        if bool(getattr(self.backbone, "causal", self.causal)) != self.causal:
            if self.causal:
                raise ConfigError(
                    f"{type(self).__name__} needs a causal (GPT-style) backbone, "
                    "and this one is bidirectional (a masked-LM backbone); "
                    "pretrain with model=causal_lm, or set model.backbone.causal=true"
                )
            raise ConfigError(
                f"{type(self).__name__} needs a bidirectional backbone: model.backbone.causal=false"
            )
        weight = getattr(self.backbone, "output_weight", self.backbone.token_embedding.weight)
        # weight tying (Press & Wolf 2017; GPT-2): one matrix embeds tokens and scores them; an
        # untied matrix (a Llama with tie_word_embeddings=false) lives in the backbone too, so
        # the handoff carries it
        self.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.lm_head.weight = weight
        # token-weighted means over an epoch, so perplexity is exp(mean loss per token)
        self.mean_loss = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.mean_acc = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, T, vocab)`` for ``tokens (B, T)``."""
        return self.logits(self.backbone(tokens))

    def logits(self, features: Tensor) -> Tensor:
        """Token logits of backbone features ``(..., dim)``: the head's matrix, after BERT's
        transform and plus its bias where the backbone has them."""
        transform = getattr(self.backbone, "lm_features", None)
        logits = self.lm_head(features if transform is None else transform(features))
        bias = self.backbone.lm_logits_bias() if transform is not None else None
        return logits if bias is None else logits + bias

    def logits_and_labels(self, batch: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        """The objective: a batch of ``(B, T + 1)`` token blocks → logits and labels (-100 =
        unscored)."""
        raise NotImplementedError

    def input_tokens(self, batch: Tensor) -> Tensor:
        """The tokens ``(B, T)`` the model reads from a training batch of ``(B, T + 1)`` blocks."""
        return batch[:, :-1]

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token read: the backbone's ``6N + 12·L·H·Q·T`` (Kaplan et al. 2020)
        plus ``6·d·V`` for the tied head, a real (d×V) matmul forward and backward that Kaplan's
        N leaves out with the embedding it shares its weight with."""
        return (
            self.backbone.flops_per_token(seq_len)
            + 6 * self.backbone.dim * self.backbone.vocab_size
        )

    def training_tokens(self, batch: Tensor) -> int:
        return self.input_tokens(batch).numel()

    def training_flops(self, batch: Tensor) -> float:
        batch_size, seq_len = self.input_tokens(batch).shape
        return float(batch_size * seq_len * self.flops_per_token(seq_len))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        # only the loss: the count and accuracy of token_cross_entropy would cost an argmax over
        # (B·T, vocab) logits every step, and training logs neither
        loss = token_loss(*self.logits_and_labels(batch, "train"))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: Tensor, stage: str) -> None:
        loss, count, correct = token_cross_entropy(*self.logits_and_labels(batch, stage))
        if count > 0:
            self.mean_loss[stage].update(loss, weight=count)
            self.mean_acc[stage].update(correct / count, weight=count)

    def _log_epoch(self, stage: str) -> None:
        mean = self.mean_loss[stage].compute()  # synchronised across processes
        self.log(f"{stage}/loss", mean, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", torch.exp(mean))
        if self.accuracy_name:
            self.log(f"{stage}/{self.accuracy_name}", self.mean_acc[stage].compute())
        self.mean_loss[stage].reset()
        self.mean_acc[stage].reset()

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def tokenizer_path(self) -> Path | None:
        """The datamodule's ``tokenizer.json``, when the model is attached to one that has it."""
        trainer = self._trainer
        return protocol.tokenizer_path(trainer.datamodule) if trainer is not None else None
