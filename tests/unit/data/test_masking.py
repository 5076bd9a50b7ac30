"""BERT masking: 15% of ordinary tokens chosen, split 80/10/10; specials untouched; seeded."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.data.masking import IGNORE_INDEX, mask_tokens
from ptft.data.tokenizer import BOS_ID, CLS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID
from ptft.errors import ConfigError

VOCAB = 1000


def batch(seed: int = 0) -> torch.Tensor:
    """64×512 random ordinary tokens framed by specials: <cls> … <sep> … <eos>, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, VOCAB, (64, 512), generator=g)
    ids[:, 0] = CLS_ID
    ids[:, 100] = SEP_ID
    ids[:, 200] = BOS_ID
    lengths = torch.randint(300, 513, (64,), generator=g)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length - 1] = EOS_ID
        ids[row, length:] = PAD_ID
    return ids


def within(share: float, p: float, n: int) -> bool:
    """``share`` of ``n`` Bernoulli(p) draws is within 5 standard deviations of ``p``.

    A correct implementation fails this with probability below 1e-6 per check. At these
    sizes (~25,000 ordinary tokens, ~3,800 chosen) one sd is ~0.002 for the 15% share and
    ~0.005-0.007 for the 80/10/10 shares, so 12% chosen (13 sd) or a 70/15/15 split (>10 sd)
    fails.
    """
    return abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_shares_follow_bert_15_percent_then_80_10_10():
    ids = batch()
    inputs, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(1))
    ordinary = ids >= NUM_SPECIAL
    chosen = labels != IGNORE_INDEX
    n_ordinary, n_chosen = int(ordinary.sum()), int(chosen.sum())
    assert n_ordinary > 20_000
    assert within(n_chosen / n_ordinary, 0.15, n_ordinary)

    masked = chosen & (inputs == MASK_ID)
    kept = chosen & (inputs == ids)
    replaced = chosen & (inputs != MASK_ID) & (inputs != ids)
    assert int(masked.sum() + kept.sum() + replaced.sum()) == n_chosen
    # a random replacement equal to the original (chance 1/993) counts as kept; that shifts
    # the shares by 1e-4, far inside the tolerance
    assert within(int(masked.sum()) / n_chosen, 0.8, n_chosen)
    assert within(int(replaced.sum()) / n_chosen, 0.1, n_chosen)
    assert within(int(kept.sum()) / n_chosen, 0.1, n_chosen)
    # replacements are ordinary tokens of the vocabulary
    assert inputs[replaced].min() >= NUM_SPECIAL and inputs[replaced].max() < VOCAB


def test_special_tokens_are_never_chosen_and_labels_mark_exactly_the_chosen():
    ids = batch(2)
    inputs, labels = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(3))
    special = ids < NUM_SPECIAL
    assert int(special.sum()) > 64 * 4  # <cls>, <sep>, <bos>, <eos> and padding are present
    assert torch.all(labels[special] == IGNORE_INDEX)
    assert torch.equal(inputs[special], ids[special])
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    assert torch.all(labels[~chosen] == IGNORE_INDEX)


def test_same_generator_seed_gives_the_same_masks_and_the_input_is_not_modified():
    ids = batch()
    before = ids.clone()
    a = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, VOCAB, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, before)


def test_all_special_batch_and_bad_probabilities():
    pads = torch.zeros(4, 16, dtype=torch.long)
    inputs, labels = mask_tokens(pads, VOCAB, mask_prob=1.0)
    assert torch.equal(inputs, pads) and torch.all(labels == IGNORE_INDEX)
    # with every ordinary token chosen and all masked, every ordinary token becomes <mask>
    ids = batch()
    inputs, labels = mask_tokens(ids, VOCAB, mask_prob=1.0, mask_fraction=1.0, random_fraction=0.0)
    assert torch.all(inputs[ids >= NUM_SPECIAL] == MASK_ID)
    with pytest.raises(ConfigError, match="mask_prob"):
        mask_tokens(ids, VOCAB, mask_prob=1.5)
    with pytest.raises(ConfigError, match="random_fraction"):
        mask_tokens(ids, VOCAB, mask_fraction=0.9, random_fraction=0.2)
