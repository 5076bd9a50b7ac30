"""The roles of special tokens (SpecialTokens): ptft's fixed ids, an imported tokenizer's from its
tokenizer_config.json, framing, masking, the token cache and the pydoc task batches with either.

The imported tokenizers here are small ones trained in the test with the special-token layouts of
BERT ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), GPT-2 (<|endoftext|> last, bos = eos,
no pad) and Llama (<unk> 0, <s> 1, </s> 2, no pad).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ptft.data import token_cache as tc
from ptft.data import tokenizer as T
from ptft.data.masking import IGNORE_INDEX, mask_tokens
from ptft.data.pydoc_corpus import DocRecord, PydocCorpus
from ptft.data.tokenizer import PTFT_SPECIALS, SpecialTokens
from ptft.errors import ConfigError
from tests.helpers import save_tokenizer

TEXTS = [
    "Return the absolute version of a path.",
    "Split a pathname into a pair (head, tail).",
    "Join two or more pathname components, inserting '/' as needed.",
    "Test whether a path exists.  Returns False for broken symbolic links.",
    "Return the base name of pathname path.",
    "Close the file.  A closed file cannot be read or written any more.",
] * 5

BERT = SpecialTokens(pad=0, unk=100, bos=None, eos=None, mask=103, sep=102, cls=101)
LLAMA = SpecialTokens(pad=None, unk=0, bos=1, eos=2, mask=None, sep=None, cls=None)


def gpt2_roles(eot: int) -> SpecialTokens:
    return SpecialTokens(unk=eot, bos=eot, eos=eot)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


# -- small tokenizers with the layouts of the three families ----------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """WordPiece with BERT's special ids and its [CLS] $A [SEP] post-processor."""
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        TEXTS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    directory = tmp_path_factory.mktemp("bert")
    save_tokenizer(tokenizer, directory)
    write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": {"content": "[CLS]", "special": True},  # the AddedToken form
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
            "model_max_length": 512,
        },
    )
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """Byte-level BPE with <|endoftext|> added last (GPT-2's 50256), as bos, eos and unk."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    tokenizer.add_special_tokens(["<|endoftext|>"])
    assert tokenizer.token_to_id("<|endoftext|>") == 300 == tokenizer.get_vocab_size() - 1
    directory = tmp_path_factory.mktemp("gpt2")
    save_tokenizer(tokenizer, directory)
    eot = "<|endoftext|>"
    write_json(
        directory / "tokenizer_config.json",
        {"bos_token": eot, "eos_token": eot, "unk_token": eot, "model_max_length": 1024},
    )
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """Byte-level BPE with <unk> 0, <s> 1, </s> 2 and Llama's <s> $A post-processor."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    directory = tmp_path_factory.mktemp("llama")
    save_tokenizer(tokenizer, directory)
    write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": None,
        },
    )
    return directory


@pytest.fixture(scope="module")
def ptft_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ptft")
    save_tokenizer(T.train_tokenizer(TEXTS, vocab_size=300), directory)
    return directory


# -- SpecialTokens -----------------------------------------------------------------------------


def test_ptft_specials_are_ids_0_to_6_and_round_trip():
    assert PTFT_SPECIALS.to_dict() == {
        "pad": 0,
        "unk": 1,
        "bos": 2,
        "eos": 3,
        "mask": 4,
        "sep": 5,
        "cls": 6,
        "native": True,
    }
    assert PTFT_SPECIALS.ids == set(range(7)) and PTFT_SPECIALS.pad_id == 0
    for specials in (PTFT_SPECIALS, BERT, LLAMA, gpt2_roles(50256)):
        d = specials.to_dict()
        assert SpecialTokens.from_dict(json.loads(json.dumps(d))) == specials
        assert all(v is None or type(v) in (int, bool) for v in d.values())
    # what a backbone carries for an imported tokenizer: roles only, native left out
    assert SpecialTokens.from_dict({"eos": 2, "bos": 1}) == SpecialTokens(bos=1, eos=2)


def test_ids_and_pad_id():
    assert BERT.ids == {0, 100, 101, 102, 103} and BERT.pad_id == 0
    assert gpt2_roles(50256).ids == {50256} and gpt2_roles(50256).pad_id == 50256  # eos pads
    assert LLAMA.ids == {0, 1, 2} and LLAMA.pad_id == 2
    with pytest.raises(ConfigError, match="neither a pad nor an eos"):
        SpecialTokens(unk=0).pad_id  # noqa: B018


@pytest.mark.parametrize(
    "d, match",
    [
        ({"eos": 3, "eos_token": 3}, r"unknown keys \['eos_token'\]"),
        ({"pad": -1}, "special_tokens.pad=-1"),
        ({"pad": "0"}, "special_tokens.pad='0'"),
        ({"pad": True}, "special_tokens.pad=True"),
        ({"native": 1}, "special_tokens.native=1"),
        ([("pad", 0)], "must be a mapping"),
    ],
)
def test_from_dict_refuses_bad_input_in_one_line(d, match):
    with pytest.raises(ConfigError, match=match) as err:
        SpecialTokens.from_dict(d)
    assert "\n" not in str(err.value)


def test_specials_of_a_backbone():
    assert T.specials_of(SimpleNamespace()) is PTFT_SPECIALS  # a checkpoint from before
    assert T.specials_of(SimpleNamespace(special_tokens=None)) is PTFT_SPECIALS
    backbone = SimpleNamespace(special_tokens={"pad": 0, "unk": 100, "cls": 101, "sep": 102})
    assert T.specials_of(backbone) == SpecialTokens(pad=0, unk=100, cls=101, sep=102)


# -- reading the roles from a tokenizer's files -------------------------------------------------


def test_special_tokens_of_a_ptft_tokenizer(ptft_dir):
    assert T.special_tokens_of(ptft_dir) == PTFT_SPECIALS
    assert T.special_tokens_of(ptft_dir / "tokenizer.json") == PTFT_SPECIALS


def test_special_tokens_of_imported_tokenizers(bert_dir, gpt2_dir, llama_dir):
    assert T.special_tokens_of(bert_dir) == BERT
    assert T.special_tokens_of(gpt2_dir / "tokenizer.json") == gpt2_roles(300)
    assert T.special_tokens_of(llama_dir) == LLAMA


def test_an_imported_tokenizer_loads_unchecked_and_splits_its_specials_out_of_text(
    bert_dir, ptft_dir
):
    bert = T.load_tokenizer(bert_dir)  # ids 0..6 are no specials here: no check_special_ids
    ids = bert.encode("the path [SEP] the file", add_special_tokens=False).ids
    assert 102 in ids  # as transformers encodes it
    assert bert.encode("the path").ids[0] == 101  # the post-processor frames with [CLS] … [SEP]
    # ptft's own tokenizer keeps encoding a literal special as text
    ptft = T.load_tokenizer(ptft_dir)
    assert not set(ptft.encode("a <eos> b", add_special_tokens=False).ids) & set(range(7))


def test_roles_from_class_defaults_and_the_special_tokens_map(tmp_path, bert_dir, gpt2_dir):
    # bert-base-uncased's tokenizer_config.json names no role: its class's defaults apply
    bare = tmp_path / "bare_bert"
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((bert_dir / "tokenizer.json").read_bytes())
    write_json(bare / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer"})
    assert T.special_tokens_of(bare) == BERT
    # gpt2's names neither roles nor class: config.json's model_type says which
    gpt2 = tmp_path / "bare_gpt2"
    gpt2.mkdir()
    (gpt2 / "tokenizer.json").write_bytes((gpt2_dir / "tokenizer.json").read_bytes())
    write_json(gpt2 / "tokenizer_config.json", {"model_max_length": 1024})
    write_json(gpt2 / "config.json", {"model_type": "gpt2"})
    assert T.special_tokens_of(gpt2) == gpt2_roles(300)
    # special_tokens_map.json overrides the config, as in transformers
    write_json(bare / "special_tokens_map.json", {"pad_token": "[MASK]"})
    assert T.special_tokens_of(bare).pad == 103


def test_an_unknown_role_string_is_a_one_line_error_naming_the_key(tmp_path, bert_dir):
    (tmp_path / "tokenizer.json").write_bytes((bert_dir / "tokenizer.json").read_bytes())
    write_json(tmp_path / "tokenizer_config.json", {"mask_token": "<mask>", "pad_token": "[PAD]"})
    with pytest.raises(ConfigError, match="mask_token='<mask>'") as err:
        T.special_tokens_of(tmp_path)
    assert "\n" not in str(err.value)
    write_json(tmp_path / "tokenizer_config.json", {"eos_token": 3})
    with pytest.raises(ConfigError, match="eos_token=3"):
        T.special_tokens_of(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        T.special_tokens_of(tmp_path)


# -- write_tokenizer_config and transformers ----------------------------------------------------


def test_write_tokenizer_config_round_trips_through_ptft(tmp_path, ptft_dir, bert_dir):
    tokenizer = T.load_tokenizer(ptft_dir)
    native = tmp_path / "native"
    save_tokenizer(tokenizer, native)
    T.write_tokenizer_config(native, PTFT_SPECIALS, tokenizer, model_max_length=128)
    assert T.special_tokens_of(native) == PTFT_SPECIALS  # still ptft's own, checked
    assert not set(T.load_tokenizer(native).encode("a <eos> b").ids) & set(range(7))
    remapped = tmp_path / "remapped"  # ptft's tokenizer with other roles: an imported one
    save_tokenizer(tokenizer, remapped)
    roles = SpecialTokens(bos=2, eos=3, pad=None, unk=1)
    T.write_tokenizer_config(remapped, roles, tokenizer)
    assert T.special_tokens_of(remapped) == roles
    with pytest.raises(ConfigError, match="special_tokens.eos=9999"):
        T.write_tokenizer_config(tmp_path, SpecialTokens(eos=9999), tokenizer)


@pytest.mark.parametrize("kind", ["ptft", "bert", "llama"])
def test_transformers_reads_the_written_config_with_the_same_ids_and_roles(
    kind, tmp_path, ptft_dir, bert_dir, llama_dir
):
    transformers = pytest.importorskip("transformers")
    source = {"ptft": ptft_dir, "bert": bert_dir, "llama": llama_dir}[kind]
    tokenizer, specials = T.read_tokenizer(source)
    save_tokenizer(tokenizer, tmp_path)
    T.write_tokenizer_config(tmp_path, specials, tokenizer, model_max_length=64)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf.model_max_length == 64
    for role in T.ROLES:
        assert getattr(hf, f"{role}_token_id") == getattr(specials, role), role
    texts = [*TEXTS[:6], "naïve café, ∑ x², 日本語"]
    if kind == "ptft":
        texts.append("A literal <eos> or <mask> inside a docstring is just text.")
    for text in texts:
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ours
        if kind != "ptft":  # what a causal LM's prompt is: transformers' own framing
            assert hf.encode(text) == tokenizer.encode(text, add_special_tokens=True).ids


# -- framing -----------------------------------------------------------------------------------


def test_native_framing_is_ptfts():
    assert T.frame_text(PTFT_SPECIALS, [10, 11]) == [3, 10, 11, 3]
    assert T.frame_text(PTFT_SPECIALS, []) == [3, 3]
    tokens, labels = T.frame_pair(PTFT_SPECIALS, [10, 11], [20, 21])
    assert tokens == [3, 10, 11, 5, 20, 21, 3]
    assert labels == [-100, -100, -100, -100, 20, 21, 3]
    assert T.prompt_prefix(PTFT_SPECIALS, [10, 11]) == [3, 10, 11, 5]
    assert T.document_separator(PTFT_SPECIALS) == 3


def test_bert_framing():
    assert T.frame_text(BERT, [2000, 2001]) == [101, 2000, 2001, 102]
    assert T.document_separator(BERT) == 102  # no eos: documents are separated by [SEP]
    with pytest.raises(ConfigError, match="no eos token"):
        T.frame_pair(BERT, [1], [2])


def test_gpt2_framing():
    e = 50256
    roles = gpt2_roles(e)
    assert T.frame_text(roles, [10, 11]) == [e, 10, 11, e]
    tokens, labels = T.frame_pair(roles, [10, 11], [20])
    assert tokens == [e, 10, 11, e, 20, e]
    assert labels == [-100, -100, -100, -100, 20, e]
    assert T.prompt_prefix(roles, [10, 11]) == [e, 10, 11, e]
    assert T.document_separator(roles) == e


def test_llama_framing():
    assert T.frame_text(LLAMA, [10, 11]) == [1, 10, 11, 2]
    tokens, labels = T.frame_pair(LLAMA, [10], [20, 21])
    assert tokens == [1, 10, 2, 20, 21, 2]
    assert labels == [-100, -100, -100, 20, 21, 2]
    assert T.document_separator(LLAMA) == 2


@pytest.mark.parametrize("specials", [PTFT_SPECIALS, LLAMA, gpt2_roles(300)])
def test_the_prompt_prefix_is_what_frame_pair_puts_before_the_target(specials):
    for prompt, target in [([], [7]), ([10, 11, 12], [20, 21]), ([9], [])]:
        tokens, labels = T.frame_pair(specials, prompt, target)
        start = next(i for i, y in enumerate(labels) if y != IGNORE_INDEX)
        assert tokens[:start] == T.prompt_prefix(specials, prompt)
        assert tokens[start:] == labels[start:] == [*target, specials.eos]


def test_document_prompt(ptft_dir, gpt2_dir, llama_dir):
    ptft = T.load_tokenizer(ptft_dir)
    text_ids = ptft.encode("Return the", add_special_tokens=False).ids
    assert T.document_prompt(PTFT_SPECIALS, ptft, "Return the") == [3, *text_ids]
    llama, roles = T.read_tokenizer(llama_dir)
    ids = llama.encode("Return the", add_special_tokens=False).ids
    assert T.document_prompt(roles, llama, "Return the") == [1, *ids]  # <s> text
    gpt2, roles = T.read_tokenizer(gpt2_dir)
    ids = gpt2.encode("Return the", add_special_tokens=False).ids
    assert T.document_prompt(roles, gpt2, "Return the") == ids  # nothing added


# -- masking -----------------------------------------------------------------------------------


def todays_mask_tokens(input_ids, vocab_size, generator, mask_prob=0.15, mask_frac=0.8, rand=0.1):
    """ptft's masking before SpecialTokens, copied: native masks must stay bit-identical."""
    shape, device = input_ids.shape, input_ids.device
    eligible = input_ids >= 7
    chosen = eligible & (torch.rand(shape, generator=generator, device=device) < mask_prob)
    action = torch.rand(shape, generator=generator, device=device)
    to_mask = chosen & (action < mask_frac)
    to_random = chosen & (action >= mask_frac) & (action < mask_frac + rand)
    random_ids = torch.randint(7, vocab_size, shape, generator=generator, device=device)
    inputs = torch.where(to_mask, torch.full_like(input_ids, 4), input_ids)
    inputs = torch.where(to_random, random_ids.to(input_ids.dtype), inputs)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return inputs, labels


@pytest.mark.parametrize("seed, shape, prob", [(0, (8, 64), 0.15), (1, (3, 500), 0.5)])
def test_native_masks_are_bit_identical_to_todays(seed, shape, prob):
    ids = torch.randint(0, 1000, shape, generator=torch.Generator().manual_seed(100 + seed))
    ids[:, 0] = 6
    default = mask_tokens(ids, 1000, torch.Generator().manual_seed(seed), prob)
    ours = mask_tokens(ids, 1000, torch.Generator().manual_seed(seed), prob, specials=PTFT_SPECIALS)
    theirs = todays_mask_tokens(ids, 1000, torch.Generator().manual_seed(seed), prob)
    for a, b, c in zip(ours, default, theirs, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def bert_batch(vocab: int, seed: int = 0) -> torch.Tensor:
    """Ordinary ids (1..99 and 104.. are ordinary for BERT, ids below 7 included) framed by
    [CLS] … [SEP], [UNK]s inside, then [PAD]."""
    g = torch.Generator().manual_seed(seed)
    ordinary = torch.tensor([i for i in range(vocab) if i not in BERT.ids])
    ids = ordinary[torch.randint(0, len(ordinary), (32, 256), generator=g)]
    ids[:, 0] = 101
    ids[:, 50] = 100
    for row in range(32):
        length = 128 + 4 * row
        ids[row, length - 1] = 102
        ids[row, length:] = 0
    return ids


def test_imported_masking_leaves_specials_alone_and_masks_with_the_mask_id():
    vocab = 300
    ids = bert_batch(vocab)
    inputs, labels = mask_tokens(ids, vocab, torch.Generator().manual_seed(1), specials=BERT)
    special = torch.isin(ids, torch.tensor(sorted(BERT.ids)))
    assert int(special.sum()) > 32 * 3
    assert torch.all(labels[special] == IGNORE_INDEX) and torch.equal(inputs[special], ids[special])
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    # low ids are ordinary for BERT: they are chosen too
    assert chosen[(ids > 0) & (ids < 7)].any()
    masked = chosen & (inputs == 103)
    assert 0.7 < int(masked.sum()) / int(chosen.sum()) < 0.9
    # everything chosen and masked: every ordinary token becomes [MASK]
    inputs, _ = mask_tokens(
        ids, vocab, mask_prob=1.0, mask_fraction=1.0, random_fraction=0.0, specials=BERT
    )
    assert torch.all(inputs[~special] == 103) and torch.equal(inputs[special], ids[special])


@pytest.mark.parametrize(
    "specials",
    [BERT, SpecialTokens(unk=0, bos=1, eos=2, mask=299), SpecialTokens(pad=3, mask=7, eos=150)],
)
def test_random_replacements_are_drawn_uniformly_from_the_ordinary_ids_only(specials):
    vocab = 300
    ordinary = sorted(set(range(vocab)) - specials.ids)
    ids = torch.tensor(ordinary).repeat(200).reshape(200, -1)
    generator = torch.Generator().manual_seed(5)
    inputs, labels = mask_tokens(
        ids,
        vocab,
        generator,
        mask_prob=1.0,
        mask_fraction=0.0,
        random_fraction=1.0,
        specials=specials,
    )
    assert torch.all(labels == ids)  # every token chosen, every one replaced at random
    counts = torch.bincount(inputs.flatten(), minlength=vocab)
    assert all(counts[i] == 0 for i in specials.ids)  # never a special
    assert sorted(torch.nonzero(counts).flatten().tolist()) == ordinary  # every ordinary id
    # uniform: ~200 draws per id (sd ~14); 8 sd either side
    assert counts[ordinary].min() > 200 - 8 * 14 and counts[ordinary].max() < 200 + 8 * 14


def test_masking_without_a_mask_token_is_a_one_line_error():
    with pytest.raises(
        ConfigError, match="^this tokenizer has no mask token; a masked LM needs one$"
    ):
        mask_tokens(torch.zeros(2, 4, dtype=torch.long), 300, specials=LLAMA)


# -- the token cache ---------------------------------------------------------------------------


def test_token_files_of_an_imported_tokenizer_separate_documents_with_its_eos(gpt2_dir, ptft_dir):
    gpt2 = T.load_tokenizer(gpt2_dir)
    texts = [*TEXTS[:4], "a literal <|endoftext|> in a text"]
    token_file = tc.build_token_file(gpt2_dir, texts, "train")
    raw = np.fromfile(token_file.path, dtype=token_file.dtype).astype(np.int64).tolist()
    expected = []
    for text in texts:
        expected += [*gpt2.encode(text, add_special_tokens=False).ids, 300]
    assert raw == expected
    assert Path(token_file.path).name.endswith("-sep300.bin")
    # ptft's own keep today's names: tokens-<split>-<tokenizer hash>-<texts hash>.bin
    native = tc.build_token_file(ptft_dir, texts, "train")
    assert len(Path(native.path).stem.split("-")) == 4


def test_the_same_tokenizer_read_as_imported_gets_other_token_files(tmp_path, ptft_dir):
    tokenizer = T.load_tokenizer(ptft_dir)
    for name, roles in (("native", None), ("imported", SpecialTokens(eos=5, pad=0))):
        save_tokenizer(tokenizer, tmp_path / name)
        if roles:
            T.write_tokenizer_config(tmp_path / name, roles, tokenizer)
    native = tc.build_token_file(tmp_path / "native", TEXTS[:3], "val")
    imported = tc.build_token_file(tmp_path / "imported", TEXTS[:3], "val")
    assert Path(native.path).name != Path(imported.path).name
    raw = np.fromfile(imported.path, dtype=imported.dtype)
    assert (raw == 5).sum() == 3 and (raw == 3).sum() == 0  # <sep> separates, as its eos


# -- the pydoc task batches --------------------------------------------------------------------


def fake_corpus() -> PydocCorpus:
    """Two packages with docstrings (and functions with names) in every split; val holds
    ``TEXTS[:6]``, train and test their own texts (no split repeats another's, as in
    ``build_corpus``)."""
    splits = {}
    for s, split in enumerate(("train", "val", "test")):
        records = []
        texts = TEXTS[:6] if split == "val" else [f"{split.title()}: {t}" for t in TEXTS[:6]]
        for i, text in enumerate(texts):
            package = ("os", "json")[i % 2]
            name = ("abspath", "split", "join", "exists", "basename", "close")[i]
            records.append(DocRecord(f"{package}/m{s}.py", package, "function", name, text))
        splits[split] = records
    return PydocCorpus(splits, {"splits": {"train": {"texts_hash": "0" * 16}}})


@pytest.fixture
def no_stdlib(monkeypatch):
    from ptft.data import pydoc_tasks

    monkeypatch.setattr(pydoc_tasks, "build_corpus", lambda *a, **k: fake_corpus())


def test_package_batches_of_an_imported_tokenizer_are_framed_and_padded_with_its_ids(
    no_stdlib, tmp_path, bert_dir
):
    from ptft.data.pydoc_tasks import PydocPackageDataModule

    data = PydocPackageDataModule(
        str(tmp_path),
        [32],
        vocab_size=512,
        max_length=32,
        tokenizer=str(bert_dir),
        batch_size=6,
        num_classes=2,
    )
    data.setup()
    assert data.specials == BERT
    # the run record copies the roles with the tokenizer: they lie beside the data's copy
    assert T.special_tokens_of(data.tokenizer_path) == BERT
    tokens, labels = next(iter(data.val_dataloader()))
    bert = T.load_tokenizer(bert_dir)
    for row, text in zip(tokens.tolist(), TEXTS[:6], strict=True):
        ids = bert.encode(text, add_special_tokens=False).ids[:30]
        assert row == [101, *ids, 102] + [0] * (len(row) - len(ids) - 2)
    # labels in package order: json (0) ties os (1) on 3 docstrings, and wins by name
    assert labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_generation_batches_of_an_imported_tokenizer_pad_with_its_eos(
    no_stdlib, tmp_path, gpt2_dir
):
    from ptft.data.pydoc_tasks import PydocNamesDataModule

    data = PydocNamesDataModule(
        str(tmp_path), [96], vocab_size=512, max_length=96, tokenizer=str(gpt2_dir), batch_size=6
    )
    data.setup()
    gpt2 = T.load_tokenizer(gpt2_dir)
    e = 300
    tokens, labels = next(iter(data.val_dataloader()))
    names = ("abspath", "split", "join", "exists", "basename", "close")
    lengths = []
    for row, row_labels, text, name in zip(
        tokens.tolist(), labels.tolist(), TEXTS[:6], names, strict=True
    ):
        prompt = gpt2.encode(" ".join(text.split()), add_special_tokens=False).ids
        target = gpt2.encode(name, add_special_tokens=False).ids
        framed = [e, *prompt, e, *target, e]
        lengths.append(len(framed))
        assert row[: len(framed)] == framed and set(row[len(framed) :]) <= {e}
        scored = [y for y in row_labels if y != IGNORE_INDEX]
        assert scored == [*target, e]
    assert tokens.shape[1] == max(lengths) and min(lengths) < max(lengths)
