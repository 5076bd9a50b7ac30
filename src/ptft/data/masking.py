"""BERT's dynamic masking (Devlin et al. 2019, section 3.1 and appendix C.2), drawn per batch.

Each non-special token is chosen for prediction with probability ``mask_prob`` (15%). A
chosen token becomes ``<mask>`` 80% of the time, a random ordinary token 10% and stays
unchanged 10%, so the model cannot rely on ``<mask>`` marking the positions it is scored
on. Drawing the choice per batch (not once per data set) gives every epoch new masks. The
special ids, the mask id and the ordinary ids come from the tokenizer's
:class:`~ptft.data.tokenizer.SpecialTokens` (ptft's own by default).
"""

from __future__ import annotations

import torch

from ptft.data.tokenizer import IGNORE_INDEX, NUM_SPECIAL, PTFT_SPECIALS, SpecialTokens
from ptft.errors import ConfigError


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    mask_prob: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    specials: SpecialTokens = PTFT_SPECIALS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` for masked-LM training from a batch of token ids.

    Special tokens (``specials.ids``: pad, bos, eos, cls, sep …; for ptft's own tokenizer
    every id below ``NUM_SPECIAL``) are never chosen, nor drawn as random replacements.
    ``labels`` holds the original id where a token was chosen and ``IGNORE_INDEX``
    elsewhere. ``input_ids`` is not modified. Pass a ``generator`` on the same device as
    ``input_ids`` for reproducible masks. Every position is an independent draw, so the
    chosen share is 15% on average, not exactly per sequence, and a very short batch may
    have no chosen position at all (its loss is then undefined).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not (
        mask_fraction >= 0.0 and random_fraction >= 0.0 and mask_fraction + random_fraction <= 1.0
    ):
        raise ConfigError(
            f"mask_fraction={mask_fraction} and random_fraction={random_fraction} must be >= 0 "
            "with a sum of at most 1; lower them"
        )
    if specials.mask is None:
        raise ConfigError("this tokenizer has no mask token; a masked LM needs one")
    shape, device = input_ids.shape, input_ids.device
    if specials.native:  # specials occupy ids 0..NUM_SPECIAL-1 (fixed by ptft.data.tokenizer)
        eligible = input_ids >= NUM_SPECIAL
    else:
        special_ids = torch.tensor(sorted(specials.ids), dtype=input_ids.dtype, device=device)
        eligible = ~torch.isin(input_ids, special_ids)
    chosen = eligible & (torch.rand(shape, generator=generator, device=device) < mask_prob)
    # one uniform draw per position splits the chosen ones 80 / 10 / 10
    action = torch.rand(shape, generator=generator, device=device)
    to_mask = chosen & (action < mask_fraction)
    to_random = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    if specials.native:
        random_ids = torch.randint(
            NUM_SPECIAL, vocab_size, shape, generator=generator, device=device
        )
    else:
        random_ids = _ordinary_ids(specials, vocab_size, shape, generator, device)

    inputs = torch.where(to_mask, torch.full_like(input_ids, specials.mask), input_ids)
    inputs = torch.where(to_random, random_ids.to(input_ids.dtype), inputs)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return inputs, labels


def _ordinary_ids(
    specials: SpecialTokens,
    vocab_size: int,
    shape: torch.Size,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Ids drawn uniformly from the ``vocab_size`` ids that are not special: the ``r``-th
    ordinary id is ``r`` shifted up past every special id at or below it."""
    below = sorted(i for i in specials.ids if i < vocab_size)
    count = vocab_size - len(below)
    if count < 1:
        raise ConfigError(f"a vocabulary of {vocab_size} ids has no ordinary token to draw")
    ids = torch.randint(0, count, shape, generator=generator, device=device)
    for special in below:  # ascending: each shift sees the ids already moved past lower ones
        ids += ids >= special
    return ids
