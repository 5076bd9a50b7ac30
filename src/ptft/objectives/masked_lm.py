"""BERT-style masked language modelling with masks drawn per batch on the device (Devlin et al.
2019).

Training draws new masks every batch from a generator seeded by ``mask_seed``, the epoch and the
process rank (each epoch and process sees different masks, reproducibly); its state goes into
every checkpoint, so a run resumed mid-epoch draws the masks it would have drawn. Validation
and test reseed at the start of each epoch, so every evaluation scores the same masked
positions and ``val/loss`` is comparable across epochs. The loss counts masked positions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ptft.config.bounds import Fraction, Seed, check_arguments
from ptft.data.masking import mask_tokens
from ptft.data.tokenizer import specials_of
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
        mask_prob: Fraction = 0.15,
        mask_seed: Seed = 0,
    ) -> None:
        check_arguments(MaskedLM.__init__, "model", locals())
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.mask_prob = mask_prob
        self.mask_seed = mask_seed
        self.generators: dict[str, torch.Generator] = {}
        #: the epoch the training generator was seeded for
        self._train_epoch: int | None = None
        #: the training generator as a checkpoint left it, until the first training batch
        self._saved_generator: dict[str, Any] | None = None

    def _reseed(self, stage: str, offset: int) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.mask_seed * 1_000_003 + offset)
        self.generators[stage] = generator

    def on_train_epoch_start(self) -> None:
        self._saved_generator = None
        self._seed_train(self.current_epoch)

    def _seed_train(self, epoch: int) -> None:
        self._reseed("train", 1 + epoch * 1009 + self.global_rank * 7)
        self._train_epoch = epoch

    def _train_generator(self) -> torch.Generator:
        """The generator of this epoch's training masks: seeded for the epoch (when it starts, or
        at its first batch), or as the checkpoint of a run resumed mid-epoch left it (Lightning
        does not start that epoch again)."""
        epoch, saved = self.current_epoch, self._saved_generator
        if saved is not None and saved["epoch"] == epoch and saved["rank"] == self.global_rank:
            generator = torch.Generator(device=self.device)
            generator.set_state(saved["state"])
            self.generators["train"], self._train_epoch = generator, epoch
        elif "train" not in self.generators or self._train_epoch not in (None, epoch):
            self._seed_train(epoch)  # an epoch Lightning did not start (a resumed one)
        self._saved_generator = None
        return self.generators["train"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if "train" in self.generators and self._train_epoch is not None:
            # this process's generator (under DDP, other ranks reseed for the epoch on resume)
            checkpoint["ptft_mask_generator"] = {
                "epoch": self._train_epoch,
                "rank": self.global_rank,
                "state": self.generators["train"].get_state(),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._saved_generator = checkpoint.get("ptft_mask_generator")

    def on_validation_epoch_start(self) -> None:
        self._reseed("val", -1 - self.global_rank)

    def on_test_epoch_start(self) -> None:
        self._reseed("test", -1001 - self.global_rank)

    def logits_and_labels(self, batch: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        if stage == "train":
            generator = self._train_generator()
        else:
            if stage not in self.generators:
                self._reseed(stage, 0)
            generator = self.generators[stage]
        tokens = batch[:, :-1]  # the datamodule serves block_size + 1 tokens for either objective
        # the special ids, the mask id and the ordinary ids of the backbone's tokenizer
        inputs, labels = mask_tokens(
            tokens,
            self.backbone.vocab_size,
            generator,
            self.mask_prob,
            specials=specials_of(self.backbone),
        )
        return self(inputs), labels
