"""Hugging Face models in and out of ptft, checked against ``transformers`` itself on small
random models the tests build (:mod:`tests.hf_models`): same logits, same greedy tokens, same
token ids, weights back bit for bit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ptft.errors import ConfigError  # noqa: E402
from ptft.interop import hf  # noqa: E402
from ptft.interop.families import Unmappable  # noqa: E402
from ptft.objectives.causal_lm import CausalLM  # noqa: E402
from ptft.objectives.losses import token_loss  # noqa: E402
from ptft.objectives.masked_lm import MaskedLM  # noqa: E402
from tests.helpers import compose_train  # noqa: E402
from tests.hf_models import BUILDERS, TEXTS, llama_dir  # noqa: E402

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2}
PROMPTS = ["Return the number of", "Open the file and return a stream object for"]


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def reference(directory: Path, masked: bool):
    auto = transformers.AutoModelForMaskedLM if masked else transformers.AutoModelForCausalLM
    return auto.from_pretrained(str(directory)).eval()


def padded_batch(tokenizer, texts: list[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask, as transformers' tokenizer encodes the texts."""
    rows = [tokenizer(t).input_ids for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_imported_logits_equal_transformers_on_a_padded_batch(hf_dirs, name):
    directory = hf_dirs[name]
    module = hf.load(directory)
    assert isinstance(module, MaskedLM if name == "bert" else CausalLM)
    assert not module.training
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = padded_batch(tokenizer, [*PROMPTS, TEXTS[2]], pad)
    assert (mask == 0).any()  # the batch is padded
    with torch.no_grad():
        expected = reference(directory, name == "bert")(ids, attention_mask=mask).logits
        got = module(ids)
    real = mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_imported_llama_keeps_grouped_query_attention_and_rope_base(hf_dirs):
    backbone = hf.load(hf_dirs["llama"]).backbone
    assert backbone.num_kv_heads == 2 and backbone.num_heads == 4
    assert backbone.blocks[0].attn.qkv.weight.shape == (32 + 2 * 16, 32)
    assert backbone.lm_head_kind == "untied" and backbone.norm_kind == "rmsnorm"
    # head_dim 8: the last of 4 pairs turns by 500^(-6/8) per position, so the config's theta
    # (500, not the default 10000) reaches the tables
    rotary = backbone.blocks[0].attn.rotary
    assert rotary.cos[1, -1].item() == pytest.approx(float(torch.cos(torch.tensor(500**-0.75))))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_ptft_generate_greedy_equals_transformers_generate(hf_dirs, name, tmp_path):
    from ptft.runs.generate import generate_text, load_generator

    directory = hf_dirs[name]
    cfg = compose_train(
        [f"ckpt_path={directory}", f"prompts={json.dumps(PROMPTS)}", "max_new_tokens=12"],
        tmp_path,
        config_name="generate",
    )
    records = generate_text(cfg)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = reference(directory, masked=False)
    for prompt, record in zip(PROMPTS, records, strict=True):
        ids = torch.tensor([tokenizer(prompt).input_ids])
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
        assert record["token_ids"] == out[0, ids.shape[1] :].tolist()
    # the prompt was encoded as transformers encodes it: BOS for Llama, nothing added for GPT-2
    module, tok = load_generator(directory)
    assert module.prompt_ids(tok, PROMPTS[0]) == tokenizer(PROMPTS[0]).input_ids


def trained(module, steps: int = 3) -> None:
    """A few optimizer steps on random tokens, so no weight is at its initial value."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.train()
    vocab = module.backbone.vocab_size
    for _ in range(steps):
        batch = torch.randint(7, vocab, (4, 17))
        token_loss(*module.logits_and_labels(batch, "train")).backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()


@pytest.fixture(scope="module")
def ptft_tokenizer():
    from ptft.data.tokenizer import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=300)


BACKBONES = {
    "gpt2_learned": {"positions": "learned"},
    "gpt2_sinusoidal": {"positions": "sinusoidal"},
    "llama": {
        "positions": "rope",
        "norm": "rmsnorm",
        "gated_mlp": True,
        "activation": "silu",
        "bias": False,
        "num_kv_heads": 2,
        "lm_head": "untied",
        "hidden_dim": 40,
    },
    "neox": {"positions": "rope", "rope_theta": 1000.0},
}
EXPECTED_ARCH = {
    "gpt2_learned": "GPT2LMHeadModel",
    "gpt2_sinusoidal": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "neox": "GPTNeoXForCausalLM",
}


def causal_module(ptft_tokenizer, **switches) -> CausalLM:
    backbone = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": ptft_tokenizer.get_vocab_size(),
        "dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "max_positions": 64,
        "dropout": 0.0,
        **switches,
    }
    torch.manual_seed(0)
    return CausalLM(backbone=backbone, input_shape=(16,), optimizer=OPT)


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_export_round_trip(ptft_tokenizer, kind, tmp_path):
    module = causal_module(ptft_tokenizer, **BACKBONES[kind])
    trained(module)
    out = hf.save(module, tmp_path / "hf", tokenizer=ptft_tokenizer.to_str())
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), output_loading_info=True
    )
    assert type(model).__name__ == EXPECTED_ARCH[kind]
    assert not any(info.values()), info  # nothing unused, missing or newly initialised
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS[:6]:  # the same token ids as ptft's own tokenizer
        assert tokenizer(text).input_ids == ptft_tokenizer.encode(text).ids
    assert tokenizer.eos_token_id == 3 and tokenizer.pad_token_id == 0
    ids = torch.randint(7, module.backbone.vocab_size, (3, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, module(ids), atol=1e-4, rtol=0)
    # the same greedy continuation
    from ptft.nn.decoding import generate

    prompt = ptft_tokenizer.encode(PROMPTS[0]).ids
    ours = generate(module, [prompt], 10)[0]
    theirs = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
    assert ours == theirs[0, len(prompt) :].tolist()
    # and back: the same weights, bit for bit (sinusoidal positions come back as a learned table)
    back = hf.load(out)
    if kind != "gpt2_sinusoidal":
        mine, theirs_state = module.backbone.state_dict(), back.backbone.state_dict()
        assert mine.keys() == theirs_state.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs_state[key]), key
    with torch.no_grad():
        torch.testing.assert_close(back(ids), module(ids), atol=1e-4, rtol=0)


def test_bert_goes_back_to_bert_bit_for_bit(hf_dirs, tmp_path):
    module = hf.load(hf_dirs["bert"])
    text = (hf_dirs["bert"] / "tokenizer.json").read_text()
    out = hf.save(module, tmp_path / "bert", tokenizer=text)
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(
        str(out), output_loading_info=True
    )
    assert type(model).__name__ == "BertForMaskedLM" and not any(info.values()), info
    original = transformers.AutoModelForMaskedLM.from_pretrained(str(hf_dirs["bert"]))
    mine, theirs = model.state_dict(), original.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dirs["bert"]))
    assert tokenizer(PROMPTS[1]).input_ids == reference_tokenizer(PROMPTS[1]).input_ids
    assert tokenizer.mask_token_id == reference_tokenizer.mask_token_id


def test_ptft_masked_lm_exports_its_encoder_as_megatron_bert(ptft_tokenizer, tmp_path):
    backbone = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": ptft_tokenizer.get_vocab_size(),
        "dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "max_positions": 64,
        "causal": False,
        "dropout": 0.0,
    }
    module = MaskedLM(backbone=backbone, input_shape=(16,), optimizer=OPT)
    trained(module)
    out = hf.save(module, tmp_path / "enc", tokenizer=ptft_tokenizer.to_str())
    model, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert type(model).__name__ == "MegatronBertModel" and not any(info.values()), info
    ids = torch.randint(7, backbone["vocab_size"], (2, 9))
    ids[1, 6:] = 0  # padding
    with torch.no_grad():
        got = module.backbone(ids)
        expected = model.eval()(ids, attention_mask=(ids != 0).long()).last_hidden_state
    real = ids != 0
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_pickle_weights_load_only_as_weights(hf_dirs, tmp_path):
    """A ``pytorch_model.bin`` directory loads with weights_only; one that would run code is
    refused in one line."""
    source = hf_dirs["gpt2"]
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text((source / name).read_text())
    state = reference(source, masked=False).state_dict()
    torch.save(state, directory / "pytorch_model.bin")
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf.load(directory)(ids), hf.load(source)(ids))

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="not a loadable PyTorch checkpoint"):
        hf.load(directory)


def test_sharded_safetensors_load(hf_dirs, tmp_path):
    source = hf_dirs["llama"]
    model = reference(source, masked=False)
    directory = tmp_path / "sharded"
    model.save_pretrained(directory, max_shard_size="20KB")
    assert (directory / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text((source / name).read_text())
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf.load(directory)(ids), model(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"model_type": "t5"}, r"model_type='t5' is not one ptft maps exactly \(supported: "),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"head_dim": 4}, "head_dim=4"),
        ({"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu'"),
    ],
)
def test_unmappable_configs_fail_in_one_line(tmp_path, edit, message):
    directory = llama_dir(tmp_path / "llama")
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters", None) if "rope_scaling" in edit else None
    (directory / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ConfigError, match=message) as err:
        hf.load(directory)
    assert "\n" not in str(err.value)


def test_models_without_an_exact_form_are_refused_in_one_line(ptft_tokenizer, tmp_path):
    from ptft.tasks.sequence_classifier import SequenceClassifier

    backbone = dict(causal_module(ptft_tokenizer).backbone_config)
    classifier = SequenceClassifier(
        backbone=backbone, input_shape=(16,), num_classes=3, optimizer=OPT
    )
    with pytest.raises(Unmappable, match="no exact Hugging Face form"):
        hf.save(classifier, tmp_path / "x")
    odd = causal_module(ptft_tokenizer, positions="rope", norm="rmsnorm")  # neither Llama nor NeoX
    with pytest.raises(Unmappable, match="exports as Llama"):
        hf.save(odd, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_export_refuses_a_non_empty_directory_and_leaves_it_alone(ptft_tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    module = causal_module(ptft_tokenizer, positions="learned")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        hf.save(module, out, tokenizer=ptft_tokenizer.to_str())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    hf.save(module, out, tokenizer=ptft_tokenizer.to_str(), overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_an_imported_causal_model_goes_back_to_its_own_architecture_bit_for_bit(
    hf_dirs, name, tmp_path
):
    module = hf.load(hf_dirs[name])
    out = hf.save(module, tmp_path / name, tokenizer=(hf_dirs[name] / "tokenizer.json").read_text())
    original = reference(hf_dirs[name], masked=False)
    exported, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), output_loading_info=True
    )
    assert type(exported) is type(original) and not any(info.values()), info
    mine, theirs = exported.state_dict(), original.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dirs[name]))
    assert tokenizer(PROMPTS[1]).input_ids == reference_tokenizer(PROMPTS[1]).input_ids
    assert tokenizer.eos_token_id == reference_tokenizer.eos_token_id


def test_a_lora_generator_exports_merged_with_the_unmerged_logits(ptft_tokenizer, tmp_path):
    """ptft-export format=hf of a LoRA fine-tune: the adapters merged into the weights give the
    adapted model's logits (1e-5), in transformers."""
    pytest.importorskip("peft")
    from ptft.tasks.sequence_generator import SequenceGenerator

    backbone = dict(causal_module(ptft_tokenizer, positions="learned").backbone_config)
    torch.manual_seed(3)
    module = SequenceGenerator(
        backbone=backbone, input_shape=(16,), optimizer=OPT, finetune="lora", lora={"r": 4}
    )
    module.inject_lora()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        batch = torch.randint(7, backbone["vocab_size"], (4, 17))
        token_loss(module(batch[:, :-1]), batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()
    out = hf.save(module, tmp_path / "merged", tokenizer=ptft_tokenizer.to_str())
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(out), output_loading_info=True
    )
    assert not any(info.values()), info
    ids = torch.randint(7, backbone["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, module(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("package", "extra"), [("transformers", "ptft[hf]"), ("safetensors.torch", "ptft[hf]")]
)
def test_a_missing_extra_is_one_line_naming_it(
    hf_dirs, ptft_tokenizer, monkeypatch, tmp_path, package, extra
):
    monkeypatch.setitem(__import__("sys").modules, package, None)
    with pytest.raises(ConfigError, match=rf"pip install '{re.escape(extra)}'") as err:
        if package == "transformers":
            hf.save(causal_module(ptft_tokenizer, positions="learned"), tmp_path / "out")
        else:
            hf.load(hf_dirs["gpt2"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
