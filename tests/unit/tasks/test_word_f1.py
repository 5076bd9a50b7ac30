"""Word F1 of a generated name: words split as a reader splits them, F1 counted by hand."""

from __future__ import annotations

import pytest
import torch

from ptft.tasks.word_f1 import word_f1, words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abspath", ["abspath"]),
        ("get_event_loop", ["get", "event", "loop"]),
        ("getEventLoop", ["get", "event", "loop"]),
        ("HTTPServer.get_url2", ["http", "server", "get", "url", "2"]),
        ("  __init__ ", ["init"]),
        ("", []),
    ],
)
def test_words_split_at_underscores_case_changes_and_punctuation(text, expected):
    assert words(text) == expected


def test_word_f1_is_the_harmonic_mean_of_word_precision_and_recall():
    # get_event_loop vs get_running_loop: 2 of 3 words right each way: p = r = 2/3
    assert word_f1("get_event_loop", "get_running_loop") == pytest.approx(2 / 3)
    # "get" against "get_loop": p = 1, r = 1/2 → 2/3; repeated words count as often as they occur
    assert word_f1("get", "get_loop") == pytest.approx(2 / 3)
    assert word_f1("get_get", "get_loop") == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    assert word_f1("close", "open") == 0.0
    assert word_f1("isDir", "is_dir") == 1.0  # the same words, written otherwise
    assert word_f1("", "") == 1.0 and word_f1("", "open") == 0.0 and word_f1("open", "") == 0.0


def test_the_generator_counts_exact_matches_and_scores_the_words_of_its_decodes(monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers

    import ptft.tasks.sequence_generator as sg
    from ptft.data.masking import IGNORE_INDEX as X

    vocab = {"<unk>": 1, "get": 10, "event": 11, "loop": 12, "running": 13, "open": 14, "x": 20}
    words_tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    backbone = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": 32,
        "dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "max_positions": 16,
        "causal": True,
    }
    model = sg.SequenceGenerator(backbone, [8], {"_target_": "torch.optim.AdamW", "lr": 1e-3})
    model._decoder = words_tokenizer
    # <eos> x <sep> | get running loop <eos>, and <eos> x <sep> | open <eos> (eos 3, sep 5)
    tokens = torch.tensor([[3, 20, 5, 10, 13, 12, 3], [3, 20, 5, 14, 3, 0, 0]])
    labels = torch.tensor([[X, X, 10, 13, 12, 3, X], [X, X, 14, 3, X, X, X]])
    # the first decode says get_event_loop (2 of 3 words each way), the second is exact
    monkeypatch.setattr(sg, "generate", lambda *a, **k: [[10, 11, 12, 3], [14, 3]])
    model._eval_step((tokens, labels), "val")
    assert model.exact_count["val"].compute().item() == 1
    assert model.exact_match["val"].compute().item() == 0.5
    assert model.word_f1["val"].compute().item() == pytest.approx((2 / 3 + 1) / 2)
