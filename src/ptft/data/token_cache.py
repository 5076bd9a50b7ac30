"""Tokenize a split once into a flat memory-mapped token file, and serve packed blocks.

The file holds every document's token ids followed by ``<eos>`` (the tokenizer's
:func:`~ptft.data.tokenizer.document_separator`), back to back, as raw ``uint16``
(vocabulary up to 65,536) or ``uint32``. It lives next to ``tokenizer.json`` and its name
carries the tokenizer's hash and the texts' hash (and, for an imported tokenizer, the
separator id), so a changed tokenizer or corpus never reuses a stale file. A JSON sidecar,
written last, marks the file complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from ptft.data.pydoc_corpus import texts_hash
from ptft.data.tokenizer import EOS_ID, document_separator, read_tokenizer, tokenizer_hash
from ptft.errors import ConfigError
from ptft.files import atomic_path, locked, write_atomic


@dataclass(frozen=True)
class TokenFile:
    """A flat token file on disk: its path, dtype and sizes (what the sidecar JSON holds)."""

    path: str
    dtype: str  # "uint16" or "uint32"
    num_tokens: int
    num_docs: int
    tokenizer_hash: str
    texts_hash: str

    def open(self) -> np.memmap:
        """A read-only memory map of the tokens (opens the file; nothing is read yet)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a ``vocab_size`` vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_documents(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    dtype: np.dtype,
    batch_size: int = 1024,
    separator: int = EOS_ID,
) -> Iterator[np.ndarray]:
    """Yield flat arrays of token ids, each document followed by ``separator`` (``<eos>``),
    batch by batch."""
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch(
            list(texts[start : start + batch_size]), add_special_tokens=False
        )
        pieces = []
        for enc in encodings:
            pieces.append(np.asarray(enc.ids, dtype=dtype))
            pieces.append(np.array([separator], dtype=dtype))
        yield np.concatenate(pieces)


def build_token_file(
    tokenizer_path: str | Path, texts: Sequence[str], split: str, batch_size: int = 1024
) -> TokenFile:
    """Tokenize ``texts`` into a token file next to the tokenizer, or reuse the cached one.

    ``tokenizer_path`` is a ``tokenizer.json`` or its directory; ``split`` only names the
    file, the cache key is the tokenizer's hash and the hash of ``texts``, and for an
    imported tokenizer the separator id (ptft's own always separates with ``<eos>``, and its
    files keep the names they had before imported tokenizers).
    """
    tokenizer_path = Path(tokenizer_path)
    directory = tokenizer_path if tokenizer_path.is_dir() else tokenizer_path.parent
    tokenizer, specials = read_tokenizer(tokenizer_path)
    separator = document_separator(specials)
    tok_hash, txt_hash = tokenizer_hash(tokenizer), texts_hash(texts)
    stem = f"tokens-{split}-{tok_hash[:12]}-{txt_hash[:12]}"
    if not specials.native:
        # the same tokenizer.json read as imported also encodes special-token strings in text
        # as specials: "-sep" keeps its files apart from the native ones too
        stem += f"-sep{separator}"
    bin_path, meta_path = directory / f"{stem}.bin", directory / f"{stem}.json"

    cached = _read_meta(meta_path, bin_path)
    if cached is not None:
        return cached
    if not texts:
        raise ConfigError(
            f"the {split} split has no texts to tokenize; check the corpus and its split fractions"
        )
    # of two processes that build the same file at once, one tokenizes; the other waits and
    # reads it
    with locked(directory / stem):
        cached = _read_meta(meta_path, bin_path)
        if cached is not None:
            return cached
        return _write_token_file(
            tokenizer, texts, bin_path, meta_path, tok_hash, txt_hash, batch_size, separator
        )


def _write_token_file(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    bin_path: Path,
    meta_path: Path,
    tok_hash: str,
    txt_hash: str,
    batch_size: int,
    separator: int = EOS_ID,
) -> TokenFile:
    dtype = token_dtype(tokenizer.get_vocab_size())
    num_tokens = 0
    # renamed into place when written, so readers never see a partial file
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as f:
        for chunk in encode_documents(tokenizer, texts, dtype, batch_size, separator):
            f.write(chunk.tobytes())
            num_tokens += len(chunk)
    token_file = TokenFile(str(bin_path), dtype.name, num_tokens, len(texts), tok_hash, txt_hash)
    write_atomic(meta_path, json.dumps(asdict(token_file), indent=2))
    return token_file


def _read_meta(meta_path: Path, bin_path: Path) -> TokenFile | None:
    if not (meta_path.exists() and bin_path.exists()):
        return None
    token_file = TokenFile(**json.loads(meta_path.read_text()))
    if bin_path.stat().st_size != token_file.num_tokens * np.dtype(token_file.dtype).itemsize:
        return None  # truncated or replaced: rebuild
    # the directory may have moved since the sidecar was written
    return TokenFile(**{**asdict(token_file), "path": str(bin_path)})


class PackedBlocks(Dataset):
    """Consecutive, non-overlapping blocks of ``block_size`` tokens from a token file.

    With ``with_next=True`` (causal LM) item ``i`` is the ``block_size + 1`` tokens starting
    at ``i * block_size``: inputs are ``item[:-1]``, targets ``item[1:]``, and the extra
    token is the next block's first. With ``with_next=False`` (masked LM) items are exactly
    ``block_size`` tokens. Items are int64 tensors; blocks cross document boundaries, where
    ``<eos>`` separates the documents. A tail shorter than a block is dropped.

    The memory map is opened lazily in each process that reads, and never pickled, so the
    dataset is cheap to send to DataLoader workers (fork or spawn).
    """

    def __init__(self, token_file: TokenFile, block_size: int, with_next: bool = True) -> None:
        if block_size < 1:
            raise ConfigError(f"block_size must be at least 1, got {block_size}")
        self.token_file = token_file
        self.block_size = block_size
        self.length = block_size + 1 if with_next else block_size
        if token_file.num_tokens < self.length:
            raise ConfigError(
                f"{token_file.path} has {token_file.num_tokens} tokens, fewer than one block of "
                f"{self.length}; lower block_size or use more text"
            )
        # blocks start every block_size tokens while a whole item still fits
        self.num_blocks = (token_file.num_tokens - self.length) // block_size + 1
        self._tokens: np.memmap | None = None
        self._pid: int | None = None

    def _data(self) -> np.memmap:
        if self._tokens is None or self._pid != os.getpid():
            self._tokens, self._pid = self.token_file.open(), os.getpid()
        return self._tokens

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range for {self.num_blocks} blocks")
        start = index * self.block_size
        return torch.from_numpy(self._data()[start : start + self.length].astype(np.int64))

    def __getstate__(self) -> dict:
        # a pickled memmap would carry the whole array; the worker reopens the file instead
        return {**self.__dict__, "_tokens": None, "_pid": None}
