"""A byte-level BPE tokenizer (Hugging Face ``tokenizers``) with fixed special-token ids, and
the roles of the special tokens of any tokenizer, ptft's or an imported one.

Byte-level BPE never needs ``<unk>``: any text is some sequence of the 256 byte tokens.
ptft's special tokens always take ids 0..6. Encoding adds no special tokens; callers add what
they need, and a literal "<eos>" inside a text is encoded as ordinary characters (see
``plain_text``).

A tokenizer imported from Hugging Face (a ``tokenizer.json`` with a ``tokenizer_config.json``
beside it) has its special tokens elsewhere (GPT-2's ``<|endoftext|>`` is 50256, BERT's
``[CLS]`` 101). :class:`SpecialTokens` holds the ids of the roles (pad, eos, mask, …) of
either kind, and every use of a special id goes through it: how text is framed
(:func:`frame_text`, :func:`frame_pair`, :func:`prompt_prefix`, :func:`document_prompt`), what
separates documents (:func:`document_separator`), what batches are padded with
(:attr:`SpecialTokens.pad_id`) and what masking leaves alone. Data reads the roles from its
tokenizer file (:func:`special_tokens_of`), a model from its backbone (:func:`specials_of`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ptft.errors import ConfigError
from ptft.files import write_atomic

#: special tokens in id order: "<pad>" is 0, "<unk>" 1, … "<cls>" 6
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<sep>", "<cls>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, SEP_ID, CLS_ID = range(len(SPECIAL_TOKENS))
#: the first id of an ordinary (non-special) token
NUM_SPECIAL = len(SPECIAL_TOKENS)
#: specials + one token per byte: the smallest vocabulary that can encode any text
MIN_VOCAB_SIZE = NUM_SPECIAL + 256

TOKENIZER_FILE = "tokenizer.json"
#: what transformers reads beside ``tokenizer.json``: the roles of the special tokens, …
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: … and, in older exports, the roles again (they override the config's, as in transformers)
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
#: the key ptft writes into a ``tokenizer_config.json`` of its own tokenizer (transformers
#: ignores it): the tokenizer stays native when read back
NATIVE_KEY = "ptft_native"
#: label of a position that is not scored (the default ``ignore_index`` of cross_entropy)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of a tokenizer's special-token roles, None where it has no such token.

    ``native`` is True for ptft's own tokenizer (ids 0..6) and its framing (``<eos> text
    <eos>``); False for an imported tokenizer, framed the way its family is (BERT's ``[CLS] …
    [SEP]``, Llama's ``<s> … </s>``, GPT-2's ``<|endoftext|>`` around the text).
    """

    pad: int | None = None
    unk: int | None = None
    bos: int | None = None
    eos: int | None = None
    mask: int | None = None
    sep: int | None = None
    cls: int | None = None
    native: bool = False

    @property
    def ids(self) -> frozenset[int]:
        """Every special id (the roles that have one)."""
        return frozenset(i for role in ROLES if (i := getattr(self, role)) is not None)

    @property
    def pad_id(self) -> int:
        """What batches are padded with: ``pad``, else ``eos`` (GPT-2 has no pad token and
        pads with its eos, as transformers users do)."""
        pad = self.pad if self.pad is not None else self.eos
        if pad is None:
            raise ConfigError("this tokenizer has neither a pad nor an eos token to pad with")
        return pad

    def to_dict(self) -> dict[str, int | bool | None]:
        """Plain ints, None and a bool: what a backbone config and a checkpoint hold."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpecialTokens:
        """The inverse of :meth:`to_dict`; a missing role is None, a missing ``native`` False
        (a backbone carries roles only for an imported tokenizer)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"special_tokens must be a mapping of role → id, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"special_tokens has unknown keys {unknown}; the roles are "
                f"{', '.join(ROLES)} (and native)"
            )
        for role in ROLES:
            value = d.get(role)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(
                    f"special_tokens.{role}={value!r}; it must be a token id (an int >= 0) or null"
                )
        native = d.get("native", False)
        if not isinstance(native, bool):
            raise ConfigError(f"special_tokens.native={native!r}; it must be true or false")
        return cls(**{role: d.get(role) for role in ROLES}, native=native)


#: the roles, in the order of ptft's ids
ROLES = ("pad", "unk", "bos", "eos", "mask", "sep", "cls")
#: ptft's own tokenizer: ``<pad>`` 0 … ``<cls>`` 6
PTFT_SPECIALS = SpecialTokens(PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, SEP_ID, CLS_ID, native=True)


def specials_of(backbone: Any) -> SpecialTokens:
    """The roles a model's backbone was built with (``backbone.special_tokens``); ptft's own
    when it has none (every ptft checkpoint from before imported models)."""
    d = getattr(backbone, "special_tokens", None)
    return PTFT_SPECIALS if d is None else SpecialTokens.from_dict(d)


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


def tokenizer_file(path: str | Path) -> Path:
    """``path`` itself, or the ``tokenizer.json`` inside a directory; it must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"tokenizer file {path} does not exist; train one or fix the path")
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object; fix or remove it")
    return data


def _imported_config(directory: Path) -> dict[str, Any] | None:
    """The ``tokenizer_config.json`` of an imported tokenizer in ``directory``; None for
    ptft's own (no config, or one ptft wrote for its own tokenizer)."""
    config = _read_json(directory / TOKENIZER_CONFIG_FILE)
    return None if config is None or config.get(NATIVE_KEY) is True else config


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json`` (or the one inside a directory).

    ptft's own tokenizer has its special ids checked and encodes special-token strings in
    text as text (``plain_text``); an imported one (a ``tokenizer_config.json`` beside it) is
    used as transformers uses it: its special-token strings are split out of the text.
    """
    return read_tokenizer(path, roles=False)[0]


def read_tokenizer(path: str | Path, roles: bool = True) -> tuple[Tokenizer, SpecialTokens]:
    """The tokenizer of ``path`` (as :func:`load_tokenizer` reads it) and its roles (as
    :func:`special_tokens_of` reads them; with ``roles=False`` an imported tokenizer's are
    not read and ``PTFT_SPECIALS`` stands in)."""
    path = tokenizer_file(path)
    tokenizer = Tokenizer.from_file(str(path))
    config = _imported_config(path.parent)
    if config is None:
        check_special_ids(tokenizer, source=str(path))
        return plain_text(tokenizer), PTFT_SPECIALS
    if not roles:
        return tokenizer, PTFT_SPECIALS
    return tokenizer, _roles(tokenizer, config, path.parent)


def special_tokens_of(path: str | Path) -> SpecialTokens:
    """The roles of the special tokens of a tokenizer file (or of the directory holding it).

    With a ``tokenizer_config.json`` beside ``tokenizer.json`` (an imported tokenizer), the
    roles come from its ``bos_token``, ``eos_token``, … (a string or ``{"content": …}``; a
    ``special_tokens_map.json`` overrides them as in transformers, and a BERT, GPT-2 or Llama
    tokenizer class supplies the defaults of its class for roles neither file names), each
    mapped to its id; otherwise ptft's fixed ids, checked.
    """
    return read_tokenizer(path)[1]


def tokenizer_specials(tokenizer: Tokenizer, directory: Path, source: str) -> SpecialTokens:
    """The roles of ``tokenizer``, read from ``directory`` (where its file came from) as
    :func:`special_tokens_of` reads them; ``source`` names it in errors."""
    config = _imported_config(directory)
    if config is None:
        check_special_ids(tokenizer, source=source)
        return PTFT_SPECIALS
    return _roles(tokenizer, config, directory, source)


#: the roles transformers' tokenizer classes give by default (bert-base-uncased and gpt2 name
#: none in their tokenizer_config.json), by the family name in ``tokenizer_class`` or the
#: ``model_type`` of config.json
_CLASS_DEFAULTS: dict[str, dict[str, str]] = {
    "bert": {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
    "gpt2": {
        "unk_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
    },
    "llama": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
}


def _family(config: Mapping[str, Any], directory: Path) -> str | None:
    name = config.get("tokenizer_class")
    if not isinstance(name, str):
        model = _read_json(directory / "config.json") or {}
        name = model.get("model_type") if isinstance(model.get("model_type"), str) else None
    if name is None:
        return None
    name = name.lower()
    return next((family for family in _CLASS_DEFAULTS if name.startswith(family)), None)


def _roles(
    tokenizer: Tokenizer, config: Mapping[str, Any], directory: Path, source: str | None = None
) -> SpecialTokens:
    where = source or str(directory / TOKENIZER_CONFIG_FILE)
    keys = [f"{role}_token" for role in ROLES]
    family = _family(config, directory)
    named: dict[str, Any] = dict(_CLASS_DEFAULTS.get(family, {})) if family else {}
    named.update((k, config[k]) for k in keys if k in config)
    if "added_tokens_decoder" not in config:  # transformers reads the map only then
        named.update(
            (k, v)
            for k, v in (_read_json(directory / SPECIAL_TOKENS_MAP_FILE) or {}).items()
            if k in keys
        )
    ids: dict[str, int | None] = {}
    for role, key in zip(ROLES, keys, strict=True):
        value = named.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if value is None:
            ids[role] = None
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}={value!r} is not a token string; fix it")
        found = tokenizer.token_to_id(value)
        if found is None:
            raise ConfigError(
                f"{where}: {key}={value!r} is not a token of the tokenizer beside it; fix {key}"
            )
        ids[role] = found
    return SpecialTokens(**ids, native=False)


def write_tokenizer_config(
    directory: str | Path,
    specials: SpecialTokens,
    tokenizer: Tokenizer,
    model_max_length: int | None = None,
) -> Path:
    """Write ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``directory`` (the
    folder of ``tokenizer.json``), so that ``transformers.AutoTokenizer.from_pretrained``
    reads a ``PreTrainedTokenizerFast`` with these roles and ptft reads them back
    (:func:`special_tokens_of`). For ptft's own tokenizer it also says to encode
    special-token strings in text as text, as ptft does; returns the config's path."""
    tokens: dict[str, str] = {}
    absent: dict[str, None] = {}
    for role in ROLES:
        token_id = getattr(specials, role)
        if token_id is None:
            absent[f"{role}_token"] = None  # said, so no class default fills it in
            continue
        token = tokenizer.id_to_token(token_id)
        if token is None:
            raise ConfigError(
                f"special_tokens.{role}={token_id} is not an id of the tokenizer "
                f"({tokenizer.get_vocab_size()} tokens)"
            )
        tokens[f"{role}_token"] = token
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, **absent}
    if specials.native:
        config |= {NATIVE_KEY: True, "split_special_tokens": True}
    config["clean_up_tokenization_spaces"] = False
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    directory = Path(directory)
    write_atomic(directory / SPECIAL_TOKENS_MAP_FILE, json.dumps(tokens, indent=2) + "\n")
    path = directory / TOKENIZER_CONFIG_FILE
    write_atomic(path, json.dumps(config, indent=2) + "\n")
    return path


def _required(specials: SpecialTokens, role: str, why: str) -> int:
    token_id = getattr(specials, role)
    if token_id is None:
        raise ConfigError(f"this tokenizer has no {role} token; {why}")
    return token_id


def frame_text(specials: SpecialTokens, ids: Sequence[int]) -> list[int]:
    """A text framed as ptft frames a document: ptft's ``<eos> text <eos>``; an imported
    tokenizer's ``cls`` (else ``bos``) before and ``sep`` (else ``eos``) after, where it has
    them (BERT ``[CLS] … [SEP]``, Llama ``<s> … </s>``, GPT-2 ``<|endoftext|>`` on both
    sides)."""
    if specials.native:
        return [specials.eos, *ids, specials.eos]
    opener = specials.cls if specials.cls is not None else specials.bos
    closer = specials.sep if specials.sep is not None else specials.eos
    return [
        *([opener] if opener is not None else []),
        *ids,
        *([closer] if closer is not None else []),
    ]


def prompt_prefix(specials: SpecialTokens, prompt_ids: Sequence[int]) -> list[int]:
    """The tokens of a prompt → target pair before the target (what a generator is given):
    ptft's ``<eos> prompt <sep>``; an imported tokenizer's ``bos`` (else ``eos``), the
    prompt, then ``sep`` (else ``eos``)."""
    eos = _required(specials, "eos", "a generated target ends with one")
    if specials.native:
        return [eos, *prompt_ids, specials.sep]
    opener = specials.bos if specials.bos is not None else eos
    middle = specials.sep if specials.sep is not None else eos
    return [opener, *prompt_ids, middle]


def frame_pair(
    specials: SpecialTokens, prompt_ids: Sequence[int], target_ids: Sequence[int]
) -> tuple[list[int], list[int]]:
    """A prompt → target pair, ``prompt_prefix + target + eos``, and its labels: one per token,
    the token itself on the target and its ``eos`` (what is scored), ``IGNORE_INDEX`` on the
    prefix."""
    prefix = prompt_prefix(specials, prompt_ids)
    scored = [*target_ids, specials.eos]
    return [*prefix, *scored], [IGNORE_INDEX] * len(prefix) + scored


def document_separator(specials: SpecialTokens) -> int:
    """The id after every document of a language model's token stream: ``eos``, else
    ``sep``."""
    for token_id in (specials.eos, specials.sep):
        if token_id is not None:
            return token_id
    raise ConfigError("this tokenizer has neither an eos nor a sep token to separate documents")


def document_prompt(specials: SpecialTokens, tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids that start a language model's generation from ``text``: ptft's documents
    follow an ``<eos>`` in the token stream, so ``<eos> text``; an imported tokenizer's, what
    transformers' tokenizer gives (its post-processor adds Llama's ``<s>``, nothing for
    GPT-2)."""
    if specials.native:
        return [specials.eos, *tokenizer.encode(text, add_special_tokens=False).ids]
    return tokenizer.encode(text, add_special_tokens=True).ids


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: equal tokenizers encode equally, so caches can share it."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
