"""Contrastive pretraining of a Transformer on text: two spans of one block are a positive pair.

Each training block (``data=pydoc_text``: consecutive docstrings of one region of a source
file, packed) gives two random spans of ``span_length`` tokens; their mean-pooled features go
through a projection MLP into symmetric NT-Xent over the batch (Chen et al. 2020), so every
other block's spans are negatives. Spans of one document as positives follow DeCLUTR (Giorgi
et al. 2021). What the encoder learns is what text near each other shares (its subject, its
vocabulary), the features a topic classifier wants, which next-token and masked-token
prediction learn slowly on a small corpus (docs/text_diagnosis.md).

Spans are drawn from a generator seeded by ``span_seed``, the optimizer step and the process
rank, so a resumed run draws the spans it would have drawn, with no state to save; validation
and test draw the same spans at every evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ptft.config.bounds import PositiveFloat, PositiveInt, Seed, check_arguments
from ptft.errors import ConfigError
from ptft.modules.backbone_module import BackboneModule
from ptft.nn.heads import ProjectionHead
from ptft.nn.pooling import pool
from ptft.objectives.losses import gathered_nt_xent


def span_starts(
    num_rows: int, length: int, span_length: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Two independent uniform start positions per row, each leaving room for a whole span."""
    room = length - span_length + 1
    starts = torch.randint(0, room, (2, num_rows), generator=generator)
    return starts[0], starts[1]


def take_spans(tokens: Tensor, starts: Tensor, span_length: int) -> Tensor:
    """Row ``i`` of the result is ``tokens[i, starts[i] : starts[i] + span_length]``."""
    offsets = starts.to(tokens.device)[:, None] + torch.arange(span_length, device=tokens.device)
    return tokens.gather(1, offsets)


class SpanContrastive(BackboneModule):
    """NT-Xent at ``temperature`` between two ``span_length``-token spans of each block."""

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        temperature: PositiveFloat = 0.1,
        span_length: PositiveInt = 32,
        projection_hidden_dim: PositiveInt = 256,
        projection_dim: PositiveInt = 64,
        span_seed: Seed = 0,
    ) -> None:
        check_arguments(SpanContrastive.__init__, "model", locals())
        if len(input_shape) != 1:
            raise ConfigError(
                f"model=span_contrastive needs a token backbone on token blocks, not inputs of "
                f"shape {list(input_shape)}; use model/backbone=transformer with a text data set"
            )
        block = int(input_shape[0])
        if span_length > block:
            raise ConfigError(
                f"model.span_length={span_length} is longer than a block of {block} tokens; "
                "lower it or raise data.block_size"
            )
        # the encoder reads spans, never a whole block: a block may be longer than the
        # backbone's positions, and a fine-tune inherits the encoder's architecture as is
        super().__init__(backbone, (span_length,), optimizer, scheduler)
        self.save_hyperparameters()
        if not hasattr(self.backbone, "token_embedding"):
            raise ConfigError(
                "model=span_contrastive needs a token backbone; use model/backbone=transformer"
            )
        self.temperature = temperature
        self.span_length = span_length
        self.span_seed = span_seed
        self.projector = ProjectionHead(
            self.backbone.out_dim, projection_hidden_dim, projection_dim
        )

    def features(self, spans: Tensor) -> Tensor:
        """Mean of a span's token features ``(B, D)`` (a span of a packed block has no padding)."""
        real = torch.ones_like(spans, dtype=torch.bool)
        return pool(self.backbone(spans), real, "mean")

    def forward(self, spans: Tensor) -> Tensor:
        return self.projector(self.features(spans))

    def _generator(self, offset: int) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.span_seed * 1_000_003 + offset)
        return generator

    def pair(self, batch: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Projections of two random spans of every block of ``batch`` ``(B, T + 1)``."""
        tokens = batch[:, :-1]  # the datamodule serves block_size + 1 tokens for every objective
        first, second = span_starts(tokens.shape[0], tokens.shape[1], self.span_length, generator)
        return (
            self(take_spans(tokens, first, self.span_length)),
            self(take_spans(tokens, second, self.span_length)),
        )

    def training_tokens(self, batch: Tensor) -> int:
        """Tokens the backbone reads in a step: two spans a block."""
        return 2 * batch.shape[0] * self.span_length

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        offset = 1 + self.global_step * 1009 + self.global_rank * 7
        z1, z2 = self.pair(batch, self._generator(offset))
        loss = gathered_nt_xent(self, z1, z2, self.temperature)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: Tensor, batch_idx: int, stage: str) -> None:
        offset = -1 - batch_idx * 1009 - self.global_rank * 7 - (0 if stage == "val" else 500_009)
        z1, z2 = self.pair(batch, self._generator(offset))
        self.log(
            f"{stage}/loss",
            gathered_nt_xent(self, z1, z2, self.temperature),
            prog_bar=stage == "val",
            sync_dist=True,
        )
        # the share of spans whose nearest span in the batch (of the other view) is their pair
        similarity = F.normalize(z1.float(), dim=1) @ F.normalize(z2.float(), dim=1).T
        hits = (similarity.argmax(1) == torch.arange(len(z1), device=z1.device)).float().mean()
        self.log(f"{stage}/pair_acc", hits, sync_dist=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")
