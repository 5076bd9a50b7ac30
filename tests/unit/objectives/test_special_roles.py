"""Language models and text tasks take the special ids from their backbone
(``Transformer(special_tokens=…)``), ptft's own when it has none."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from ptft.data.masking import IGNORE_INDEX
from ptft.data.tokenizer import SpecialTokens
from ptft.objectives.causal_lm import CausalLM
from ptft.objectives.masked_lm import MaskedLM
from ptft.tasks.sequence_classifier import SequenceClassifier
from ptft.tasks.sequence_generator import SequenceGenerator

ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
EOT = 299  # GPT-2's <|endoftext|>, last in the vocabulary: bos, eos and padding
GPT2 = {"unk": EOT, "bos": EOT, "eos": EOT}
BERT = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def backbone(causal: bool, special_tokens: dict | None = None) -> dict:
    config = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": 300,
        "dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.0,
        "max_positions": 32,
        "causal": causal,
    }
    return config if special_tokens is None else {**config, "special_tokens": special_tokens}


def word_level() -> Tokenizer:
    """A tokenizer whose words have known ids ("a" 10, "b" 11), and <s> 1 added before a text
    by its post-processor, as Llama's does."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 10, "b": 11}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def test_a_causal_lm_prompts_and_stops_with_its_backbones_roles():
    tokenizer = word_level()
    ptft = CausalLM(backbone(True), [16], ADAMW)
    assert ptft.prompt_ids(tokenizer, "a b") == [3, 10, 11] and ptft.stop_ids == (3,)
    llama = CausalLM(backbone(True, {"unk": 0, "bos": 1, "eos": 2}), [16], ADAMW)
    assert llama.prompt_ids(tokenizer, "a b") == [1, 10, 11] and llama.stop_ids == (2,)


def test_a_generator_prompts_as_its_pairs_are_framed():
    tokenizer = word_level()
    ptft = SequenceGenerator(backbone(True), [16], ADAMW)
    assert ptft.prompt_ids(tokenizer, "a b") == [3, 10, 11, 5] and ptft.stop_ids == (3,)
    gpt2 = SequenceGenerator(backbone(True, GPT2), [16], ADAMW)
    assert gpt2.prompt_ids(tokenizer, "a b") == [EOT, 10, 11, EOT] and gpt2.stop_ids == (EOT,)


def test_a_masked_lm_masks_with_its_backbones_roles():
    model = MaskedLM(backbone(False, BERT), [16], ADAMW, mask_prob=1.0)
    tokens = torch.tensor([[101, 1, 2, 3, 200, 102, 0, 0]])
    batch = torch.cat([tokens, tokens[:, :1]], dim=1)  # the extra token a block carries
    model.generators["val"] = torch.Generator().manual_seed(0)
    _, labels = model.logits_and_labels(batch, "val")
    # ids 1..3 are ordinary for BERT; [CLS], [SEP] and [PAD] are not
    assert labels.tolist() == [[IGNORE_INDEX, 1, 2, 3, 200] + [IGNORE_INDEX] * 3]
    assert SpecialTokens.from_dict(model.backbone.special_tokens).mask == 103


def test_a_sequence_classifier_pools_over_the_tokens_that_are_not_its_padding():
    torch.manual_seed(0)
    model = SequenceClassifier(
        backbone(True, GPT2), [16], num_classes=3, optimizer=ADAMW, head_dropout=0.0
    ).eval()
    short = torch.tensor([[EOT, 20, 21, 22, EOT]])
    padded = torch.cat([short, torch.full((1, 6), EOT)], dim=1)  # GPT-2 pads with its eos
    zero_padded = torch.cat([short, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(short), model(padded), atol=1e-5)
        # 0 is an ordinary token here: a real token, read by the pooling
        assert not torch.allclose(model(short), model(zero_padded), atol=1e-3)
