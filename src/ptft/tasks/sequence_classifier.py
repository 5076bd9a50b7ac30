"""Sequence classification: a Transformer backbone, pooled to one vector, and a linear head.

The image :class:`~ptft.tasks.classifier.Classifier` with token inputs: same loss, metrics
(accuracy and macro F1) and fine-tuning modes; only the features differ, pooled from the
token features in the way that fits the backbone (see :mod:`ptft.nn.pooling`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ptft.config.bounds import (
    Fraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    check_arguments,
)
from ptft.data.tokenizer import specials_of
from ptft.errors import ConfigError
from ptft.interop.lora import LoRAConfig
from ptft.nn.pooling import pool, resolve_pooling
from ptft.optim import LRScalingConfig
from ptft.tasks.classifier import Classifier, FinetuneMode, UnfreezeSchedule


class SequenceClassifier(Classifier):
    """Cross-entropy over ``num_classes`` on pooled features of right-padded token batches."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        finetune: FinetuneMode = "full",
        pooling: Literal["auto", "first", "last", "mean"] = "auto",
        head_dropout: Probability = 0.1,
        label_smoothing: Probability = 0.0,
        unfreeze_epochs: PositiveInt | None = None,
        discriminative_lr: PositiveFloat | None = None,
        lr_scaling: LRScalingConfig | None = None,
        lora: LoRAConfig | None = None,
        unfreeze_schedule: UnfreezeSchedule = "steps",
        unfreeze_fraction: Fraction = 0.5,
    ) -> None:
        check_arguments(SequenceClassifier.__init__, "model", locals())
        super().__init__(
            backbone,
            input_shape,
            num_classes,
            optimizer,
            scheduler,
            finetune,
            augment=None,
            head_dropout=head_dropout,
            label_smoothing=label_smoothing,
            unfreeze_epochs=unfreeze_epochs,
            discriminative_lr=discriminative_lr,
            lr_scaling=lr_scaling,
            lora=lora,
            unfreeze_schedule=unfreeze_schedule,
            unfreeze_fraction=unfreeze_fraction,
        )
        # the image classifier's augment is none of this class's arguments: ptft-eval rebuilds
        # the module from these hyper-parameters
        self.save_hyperparameters(ignore=["augment"])
        if not hasattr(self.backbone, "token_embedding"):
            raise ConfigError(
                "model=sequence_classifier needs a token backbone; use model/backbone=transformer"
            )
        try:
            self.pooling = resolve_pooling(pooling, causal=bool(self.backbone.causal))
        except ValueError as err:
            raise ConfigError(f"model.pooling: {err}") from err

    def training_flops(self, batch: Sequence[torch.Tensor]) -> float | None:
        """When everything trains: the backbone's ``6N + 12·L·H·Q·T`` per token and the linear
        head's ``6·d·C`` per sequence (pooling is no matmul work). A frozen or partly frozen
        backbone runs no or part of its backward: None, and the FLOPs are measured. So with
        LoRA: the backward runs through the whole backbone for the activations' gradients, but
        computes weight gradients only for the adapters and the head, which the measurement
        (on a copy with the same ``requires_grad``) counts as they run."""
        if self.finetune != "full":
            return None
        batch_size, seq_len = batch[0].shape
        head = 6 * self.backbone.dim * self.head[-1].out_features
        return float(batch_size * (seq_len * self.backbone.flops_per_token(seq_len) + head))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        # a bidirectional backbone masks the padding itself; a causal one needs no mask for
        # right padding, since no real token attends to a later position; the padding is the
        # tokenizer's pad id (<pad>, or the eos of a tokenizer without one, such as GPT-2's)
        real = tokens != specials_of(self.backbone).pad_id
        return pool(self.backbone(tokens), real, self.pooling)
