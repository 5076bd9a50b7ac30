"""A byte-level BPE tokenizer (Hugging Face ``tokenizers``) with fixed special-token ids.

Byte-level BPE never needs ``<unk>``: any text is some sequence of the 256 byte tokens.
The special tokens always take ids 0..6, so models, masking and padding can rely on them
without asking the tokenizer. Encoding adds no special tokens; callers add what they need,
and a literal "<eos>" inside a text is encoded as ordinary characters (see ``plain_text``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ptft.errors import ConfigError

#: special tokens in id order: "<pad>" is 0, "<unk>" 1, … "<cls>" 6
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<sep>", "<cls>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, SEP_ID, CLS_ID = range(len(SPECIAL_TOKENS))
#: the first id of an ordinary (non-special) token
NUM_SPECIAL = len(SPECIAL_TOKENS)
#: specials + one token per byte: the smallest vocabulary that can encode any text
MIN_VOCAB_SIZE = NUM_SPECIAL + 256

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2
) -> Tokenizer:
    """Train byte-level BPE on ``texts``; the result has at most ``vocab_size`` tokens.

    Training is deterministic for the same texts in the same order.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for {NUM_SPECIAL} special tokens and 256 bytes; "
            f"use vocab_size>={MIN_VOCAB_SIZE}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # no prefix space: the leading word of a docstring keeps its own spelling
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # the trainer gives them ids 0.. in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    check_special_ids(tokenizer)
    return plain_text(tokenizer)


def plain_text(tokenizer: Tokenizer) -> Tokenizer:
    """Make ``tokenizer`` encode special-token strings found in text as ordinary text.

    Otherwise a docstring that mentions ``<eos>`` would end a document early or a ``<mask>``
    would look masked. The flag is not saved in tokenizer.json, so loading sets it again.
    """
    tokenizer.encode_special_tokens = True
    return tokenizer


def check_special_ids(tokenizer: Tokenizer, source: str = "the tokenizer") -> None:
    """Raise ``ConfigError`` unless the special tokens have ids 0..6 in order."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        found = tokenizer.token_to_id(token)
        if found != expected:
            raise ConfigError(
                f"{source} gives {token} id {found}, not {expected}; "
                "use a tokenizer trained with ptft.data.tokenizer.train_tokenizer"
            )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json`` (or the one inside a directory) and check its special ids."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"tokenizer file {path} does not exist; train one or fix the path")
    tokenizer = Tokenizer.from_file(str(path))
    check_special_ids(tokenizer, source=str(path))
    return plain_text(tokenizer)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: equal tokenizers encode equally, so caches can share it."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
