"""Decoding from a causal language model: greedy, or sampled with temperature, top-k and top-p
(nucleus, Holtzman et al. 2020), using the backbone's key/value cache. ``ptft-generate``'s
driver (checkpoint → module + tokenizer → ``generations.jsonl``) is :mod:`ptft.runs.generate`.

Prompts of different lengths are decoded together by grouping them by length: each group
is one batch with no padding, so a prompt's continuation is the one it would get alone
(with greedy decoding; sampling draws from one shared generator). A row that emits a stop
id leaves its batch, and the stop id ends its list, so the caller can see why it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ptft.modules.language_model import LanguageModel  # typing only: nn imports no module

#: why a sequence ended, as ``ptft-generate`` writes it
STOP_REASONS = ("stop_id", "max_new_tokens", "max_positions")


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ``ValueError`` for decoding settings that mean nothing."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}; it must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}; it must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}; it must be >= 1 (or null for no top-k filtering)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}; it must be in (0, 1] (or null for no nucleus filtering)")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits (B, V)`` with every token outside the top-k and then the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability (under the
    top-k-filtered distribution) reaches ``top_p``; the most likely token is always kept.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (a tie with the k-th stays in)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # a token is in the nucleus while the mass of the tokens before it is still short of p
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One next token ``(B,)`` per row of ``logits (B, V)``: argmax at temperature 0, else a
    sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def stop_reason(ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> str:
    """Why ``generate`` returned ``ids``: a stop id, the token budget, or the context length."""
    if ids and ids[-1] in stop_ids:
        return "stop_id"
    return "max_new_tokens" if len(ids) >= max_new_tokens else "max_positions"


@torch.no_grad()
def _decode_batch(
    model: LanguageModel,
    tokens: Tensor,
    budget: int,
    sampling: dict,
    stop: Tensor,
) -> list[list[int]]:
    """Continue every row of ``tokens (B, T)`` (all real tokens) by up to ``budget`` tokens."""
    features, cache = model.backbone(tokens, return_cache=True)
    logits = model.logits(features[:, -1])
    out: list[list[int]] = [[] for _ in range(tokens.shape[0])]
    rows = torch.arange(tokens.shape[0])  # which original row each batch row is
    for step in range(budget):
        new = next_tokens(logits, **sampling)
        for row, token in zip(rows.tolist(), new.tolist(), strict=True):
            out[row].append(token)
        alive = ~torch.isin(new, stop)
        if step == budget - 1 or not alive.any():
            break
        if not alive.all():  # finished rows leave the batch, cache included
            keep = alive.nonzero().squeeze(-1)
            rows, new = rows[keep.cpu()], new[keep]
            cache = [(k[keep], v[keep]) for k, v in cache]
        features, cache = model.backbone(new[:, None], kv_cache=cache, return_cache=True)
        logits = model.logits(features[:, -1])
    return out


def generate(
    model: LanguageModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """The new token ids after each prompt (prompt not included), in prompt order.

    A sequence ends after a stop id (kept as its last id), after ``max_new_tokens``, or when
    the context reaches ``backbone.max_positions``; a prompt longer than
    ``max_positions - 1`` keeps only its last ``max_positions - 1`` tokens, so at least one
    new token fits. ``generator`` drives sampling (and must live on the model's device).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    backbone = model.backbone
    if not getattr(backbone, "causal", False):
        raise ValueError(
            "generation needs a causal (GPT-style) backbone; "
            "a masked-LM backbone cannot generate left to right"
        )
    vocab_size, max_positions = backbone.vocab_size, backbone.max_positions
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(
                f"prompt {i} is empty; a causal LM needs at least one token to start from"
            )
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary of {vocab_size}")
    results: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0 or not prompts:
        return results

    device = model.lm_head.weight.device
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    kept = [list(p)[-(max_positions - 1) :] for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(kept):
        groups.setdefault(len(prompt), []).append(i)

    was_training = model.training
    model.eval()  # no dropout while decoding
    try:
        for length, indices in sorted(groups.items()):
            tokens = torch.tensor([kept[i] for i in indices], dtype=torch.long, device=device)
            budget = min(max_new_tokens, max_positions - length)
            for i, ids in zip(
                indices, _decode_batch(model, tokens, budget, sampling, stop), strict=True
            ):
                results[i] = ids
    finally:
        model.train(was_training)
    return results
