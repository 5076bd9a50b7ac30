"""Span-contrastive pretraining: the spans it reads, its loss against a loop-by-loop NT-Xent,
spans that depend only on the step (so a resume draws them again), and its one-line errors."""

from __future__ import annotations

import pytest
import torch

from ptft.errors import ConfigError
from ptft.objectives.span_contrastive import SpanContrastive, span_starts, take_spans
from tests.unit.objectives.test_losses import naive_nt_xent

ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
BACKBONE = {
    "_target_": "ptft.nn.transformer.Transformer",
    "vocab_size": 64,
    "dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "dropout": 0.0,
    "max_positions": 32,
    "causal": False,
}


def model(**kwargs) -> SpanContrastive:
    torch.manual_seed(0)
    return SpanContrastive(BACKBONE, [16], ADAMW, span_length=6, **kwargs)


def test_spans_are_the_slices_their_starts_name():
    tokens = torch.arange(5 * 16).reshape(5, 16)
    first, second = span_starts(5, 16, 6, torch.Generator().manual_seed(1))
    assert first.min() >= 0 and max(first.max(), second.max()) <= 16 - 6
    spans = take_spans(tokens, first, 6)
    for row in range(5):
        start = int(first[row])
        assert spans[row].tolist() == tokens[row, start : start + 6].tolist()
    # every start is drawn: over many rows each of the 11 is taken
    many, _ = span_starts(2000, 16, 6, torch.Generator().manual_seed(2))
    assert set(many.tolist()) == set(range(11))


def test_the_loss_is_nt_xent_of_the_two_spans_mean_pooled_features():
    module = model(temperature=0.3).eval()  # the projector's batch norm, row by row
    batch = torch.randint(7, 64, (4, 17))
    generator = torch.Generator().manual_seed(5)
    z1, z2 = module.pair(batch, generator)
    first, second = span_starts(4, 16, 6, torch.Generator().manual_seed(5))
    # by hand: each span read alone, its token features averaged, then projected
    for z, starts in ((z1, first), (z2, second)):
        for row in range(4):
            span = batch[row, int(starts[row]) : int(starts[row]) + 6][None]
            expected = module.projector(module.backbone(span).mean(1))
            torch.testing.assert_close(z[row], expected[0])
    module.train()
    loss = module.training_step(batch, 0)  # step 0, rank 0, outside a trainer
    z1, z2 = module.pair(batch, module._generator(1))
    torch.testing.assert_close(loss.double(), naive_nt_xent(z1.double(), z2.double(), 0.3))


def test_the_spans_of_a_step_do_not_depend_on_what_ran_before():
    # a resumed run is at the same global_step with fresh generators: it must draw alike
    a, b = model(span_seed=3), model(span_seed=3)
    batch = torch.randint(7, 64, (4, 17))
    a.training_step(batch, 0)  # a has taken a step's draw already; b has not
    assert torch.equal(a.pair(batch, a._generator(1))[0], b.pair(batch, b._generator(1))[0])
    other = model(span_seed=4)
    assert not torch.equal(
        a.pair(batch, a._generator(1))[0], other.pair(batch, other._generator(1))[0]
    )


def test_a_span_longer_than_a_block_and_an_image_backbone_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"model.span_length=20 is longer than a block of 16"):
        SpanContrastive(BACKBONE, [16], ADAMW, span_length=20)
    with pytest.raises(ConfigError, match="needs a token backbone"):
        SpanContrastive({"_target_": "ptft.nn.cnn.CNN"}, [1, 8, 8], ADAMW)
