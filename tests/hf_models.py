"""Small random Hugging Face models and the tokenizers they come with, built by the tests with
``transformers`` and ``tokenizers`` themselves (nothing is downloaded): a GPT-2 (byte-level
BPE, ``<|endoftext|>`` as bos and eos, no pad), a BERT (WordPiece, ``[CLS] … [SEP]``) and a
Llama with grouped-query attention (``<s>`` added in front, ``</s>`` to end)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

#: text the tokenizers are trained on (and the prompts come from)
TEXTS = [
    "Return the number of items in the container.",
    "Open the file and return a stream object for reading and writing.",
    "This module provides access to the mathematical functions of the C standard.",
    "Create a new dictionary with keys from the iterable and values set to value.",
    "Raise an exception when the argument is not an integer or a float.",
    "Split the string at the first occurrence of the separator and return a tuple.",
] * 4


def _bpe(specials: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    return tokenizer


def _save(model, tokenizer: Tokenizer, directory: Path, **roles: str) -> Path:
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles).save_pretrained(directory)
    return directory


def gpt2_dir(directory: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2; its end-of-text token is the last id, as in GPT-2's own vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _bpe([], 330)
    eos = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=eos + 1,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    return _save(model, tokenizer, directory, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def bert_dir(directory: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with its MLM head; special tokens away from ptft's ids 0..6."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    model = BertForMaskedLM(config)
    return _save(
        model,
        tokenizer,
        directory,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def llama_dir(directory: Path, seed: int = 0, tied: bool = False) -> Path:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads), RoPE
    base 500, and an untied head unless ``tied``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _bpe(["<unk>", "<s>", "</s>"], 320)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=500.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    return _save(model, tokenizer, directory, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


BUILDERS = {"gpt2": gpt2_dir, "bert": bert_dir, "llama": llama_dir}
