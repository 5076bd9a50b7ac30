"""Hugging Face models through ptft's own runs: ``model.pretrained=<hf dir>`` for every
language task, ``ptft-eval`` on one, and ``ptft-export`` from a ptft run to each format
(small random models built by the tests; nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ptft.checkpoints import read_checkpoint  # noqa: E402
from ptft.data.tokenizer import load_tokenizer, special_tokens_of  # noqa: E402
from ptft.errors import ConfigError  # noqa: E402
from ptft.export import check  # noqa: E402
from ptft.interop import hf  # noqa: E402
from ptft.runs.export import export  # noqa: E402
from ptft.runs.fit import train  # noqa: E402
from tests.helpers import QUIET, compose_train, run_cli  # noqa: E402
from tests.hf_models import bert_dir, gpt2_dir, llama_dir  # noqa: E402

SHORT = [
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "logger=none",
    *QUIET,
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    transformers.utils.logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("hf_models")
    return {
        "gpt2": gpt2_dir(root / "gpt2"),
        "bert": bert_dir(root / "bert"),
        "llama": llama_dir(root / "llama"),
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pydoc_cache")


CASES = [
    ("gpt2", "pydoc_package_classifier", ["data.max_length=24"]),
    ("bert", "pydoc_package_classifier", ["data.max_length=24"]),
    ("llama", "pydoc_name_generator", ["data.max_length=48", "model.max_new_tokens=4"]),
    ("bert", "pydoc_bert", ["data.block_size=32"]),
]


@pytest.mark.parametrize(("model", "experiment", "extra"), CASES)
def test_pretrained_hf_directory_starts_every_language_task(
    dirs, cache, tmp_path, model, experiment, extra
):
    source = dirs[model]
    cfg = compose_train(
        [
            f"experiment={experiment}",
            f"model.pretrained={source}",
            f"data.cache_dir={cache}",
            *SHORT,
            *extra,
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    # the data was encoded with the model's own tokenizer, whose roles came along
    assert (tmp_path / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    assert special_tokens_of(tmp_path) == special_tokens_of(source)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt", "ckpt_path")
    backbone = checkpoint["ptft_backbone"]["config"]
    assert backbone["special_tokens"] == special_tokens_of(source).to_dict()
    # every pretrained tensor the task uses started from the Hugging Face weights: the
    # backbone's non-embedding shapes are the imported ones
    imported = hf.load(source).backbone.state_dict()
    trained = {
        k[len("backbone.") :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("backbone.")
    }
    if experiment == "pydoc_package_classifier":
        assert not any(k.startswith(("lm_output.", "lm_transform.", "lm_bias.")) for k in trained)
    shared = set(trained) & set(imported)
    assert shared and all(trained[k].shape == imported[k].shape for k in shared)


def test_bert_classifier_frames_text_as_bert_does(dirs, cache, tmp_path):
    """[CLS] text [SEP], padded with [PAD]: what BERT was pretrained on."""
    from ptft.handoff import read_pretrained, with_tokenizer
    from ptft.runs.build import build_datamodule

    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"model.pretrained={dirs['bert']}",
            f"data.cache_dir={cache}",
            "data.max_length=24",
        ],
        tmp_path,
    )
    pretrained = read_pretrained(dirs["bert"])
    data_cfg = with_tokenizer(
        dict(cfg.data), pretrained.tokenizer, tmp_path, "test", pretrained.config["special_tokens"]
    )
    datamodule = build_datamodule(data_cfg, supervised=True)
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokens, _ = next(iter(datamodule.val_dataloader()))
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    cls_id, sep_id, pad_id = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert (tokens[:, 0] == cls_id).all()
    for row in tokens.tolist():
        real = [t for t in row if t != pad_id]
        assert real[-1] == sep_id and row[: len(real)] == real  # padded on the right


@pytest.fixture(scope="module")
def gpt_run(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pydoc_gpt")
    train(
        compose_train(
            [
                "experiment=pydoc_gpt",
                f"data.cache_dir={cache}",
                "data.vocab_size=512",
                "model.backbone.dim=32",
                "model.backbone.num_layers=2",
                "model.backbone.num_heads=2",
                "model.backbone.positions=learned",
                "test=false",
                *SHORT,
                "data.block_size=32",
            ],
            out,
        )
    )
    return out


def test_ptft_export_hf_and_safetensors_from_a_run(gpt_run, cache, tmp_path):
    result = run_cli(
        ["ptft.export", f"ckpt_path={gpt_run}", "format=hf", f"output={tmp_path / 'hf'}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "hf"), output_loading_info=True
    )
    assert not any(info.values()), info
    module = hf.load(gpt_run)
    ids = torch.randint(7, module.backbone.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, module(ids), atol=1e-4, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = load_tokenizer(gpt_run / "tokenizer.json")
    text = "Return the <eos> number of items."  # a special-token string stays text in both
    assert tokenizer(text).input_ids == ours.encode(text).ids

    # format=safetensors (in-process, as ptft-export runs it): no pickle; the directory is a
    # checkpoint to every reader
    out = tmp_path / "st"
    export(compose_export(gpt_run, "safetensors", out, tmp_path))
    assert sorted(p.name for p in out.iterdir()) == [
        "model.safetensors",
        "ptft_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert json.loads((out / "ptft_config.json").read_text())["tied"] == {
        "lm_head.weight": "backbone.token_embedding.weight"
    }
    with torch.no_grad():
        torch.testing.assert_close(hf.load(out)(ids), module(ids), rtol=0, atol=0)
    # continued pretraining from the export: its architecture and tokenizer come along
    cfg = compose_train(
        ["experiment=pydoc_gpt", f"model.pretrained={out}", f"data.cache_dir={cache}", *SHORT],
        tmp_path / "more",
    )
    assert train(cfg)
    more = read_checkpoint(tmp_path / "more" / "checkpoints" / "last.ckpt", "ckpt_path")
    assert more["ptft_backbone"]["config"] == read_checkpoint(out, "x")["ptft_backbone"]["config"]
    assert (tmp_path / "more" / "tokenizer.json").read_text() == (
        out / "tokenizer.json"
    ).read_text()


def compose_export(ckpt: Path, fmt: str, out: Path, tmp_path: Path):
    cfg = compose_train(
        [f"ckpt_path={ckpt}", f"format={fmt}", f"output={out}"], tmp_path, config_name="export"
    )
    check(cfg)
    return cfg


def test_ptft_export_onnx_from_a_run(gpt_run, tmp_path):
    import onnxruntime

    out = tmp_path / "onnx"
    export(compose_export(gpt_run, "onnx", out, tmp_path))  # checks onnxruntime against torch
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    module = hf.load(gpt_run)
    for batch, length in ((1, 5), (3, 20)):
        ids = torch.randint(7, module.backbone.vocab_size, (batch, length))
        (logits,) = session.run(None, {"input_ids": ids.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), module(ids), atol=1e-4, rtol=0)


def test_ptft_export_errors_are_one_line_and_write_nothing(gpt_run, tmp_path):
    bad = run_cli(
        ["ptft.export", f"ckpt_path={gpt_run}", "format=pickle", f"output={tmp_path / 'x'}"],
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("format=pickle is not one of hf, safetensors, onnx, peft")
    )
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory
    with pytest.raises(ConfigError, match="holds no LoRA adapter") as err:
        export(compose_export(gpt_run, "peft", tmp_path / "y", tmp_path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_scratch_model_on_an_imported_tokenizer_takes_its_roles(dirs, cache, tmp_path):
    """No pretrained weights, BERT's tokenizer: the new backbone pads and pools with [PAD]."""
    tokenizer = dirs["bert"] / "tokenizer.json"
    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"data.tokenizer={tokenizer}",
            f"data.cache_dir={cache}",
            "data.max_length=24",
            "model.backbone.dim=32",
            "model.backbone.num_layers=1",
            "model.backbone.num_heads=2",
            "model.backbone.causal=false",
            *SHORT,
        ],
        tmp_path,
    )
    train(cfg)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt", "ckpt_path")
    backbone = checkpoint["ptft_backbone"]["config"]
    roles = special_tokens_of(dirs["bert"])
    assert backbone["special_tokens"] == roles.to_dict() and not roles.native
    assert backbone["pad_token_id"] == roles.pad == 0


def test_ptft_eval_scores_a_hugging_face_directory_before_any_training(dirs, cache, tmp_path):
    from ptft.evaluation.report import evaluate

    cfg = compose_train(
        [
            f"ckpt_path={dirs['gpt2']}",
            "data=pydoc_text",
            f"data.cache_dir={cache}",
            "data.block_size=32",
            "trainer.limit_test_batches=2",
            *QUIET[2:],
        ],
        tmp_path,
        config_name="eval",
    )
    evaluate(cfg)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["checkpoint"] == str(dirs["gpt2"])
    vocab = hf.load(dirs["gpt2"]).backbone.vocab_size
    # a random model is close to uniform over its vocabulary: perplexity near its size
    assert 0.8 * vocab < report["metrics"]["test/ppl"] < 1.25 * vocab, report
