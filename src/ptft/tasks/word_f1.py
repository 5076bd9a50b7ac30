"""Partial credit for a generated name or short text: F1 over its words (SQuAD-style).

A function name is scored by its words, so ``get_event_loop`` for ``get_running_loop`` earns
2/3 where exact match gives nothing: on a few hundred test names exact match moves by whole
examples, word F1 by parts of them. Words are split at whitespace, underscores, other
punctuation and lower→upper case changes (``getEventLoop``), and compared lower-cased.
"""

from __future__ import annotations

import re
from collections import Counter

#: a run of letters that does not cross a lower→upper change, or a run of digits
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (``"HTTPServer.get_url2"`` → http, server, get, url, 2)."""
    return [w.lower() for w in _WORD.findall(text)]


def word_f1(prediction: str, target: str) -> float:
    """Harmonic mean of the precision and recall of ``prediction``'s words against
    ``target``'s, each word counted as often as it occurs; 1.0 when both have no words."""
    predicted, wanted = Counter(words(prediction)), Counter(words(target))
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((predicted & wanted).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(predicted.values()), common / sum(wanted.values())
    return 2 * precision * recall / (precision + recall)
