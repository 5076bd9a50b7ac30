"""Fine-tuning on text: the labelled docstring tasks, pooling, the sequence classifier and
generator, and the handoff of backbone and tokenizer from a pretrained language model."""

from __future__ import annotations

import json
import math
import platform
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptft.data.masking import IGNORE_INDEX
from ptft.data.pydoc_tasks import GenerationExamples, frame_pair, frame_text
from ptft.data.tokenizer import EOS_ID, PAD_ID, SEP_ID, load_tokenizer
from ptft.errors import ConfigError
from ptft.nn.decoding import generate
from ptft.nn.pooling import pool
from ptft.objectives.losses import token_cross_entropy
from ptft.runs.build import build_datamodule, build_model, plain
from ptft.runs.fit import train
from ptft.tasks.sequence_classifier import SequenceClassifier
from ptft.tasks.sequence_generator import SequenceGenerator, split_pairs
from tests.helpers import QUIET, compose_train

TINY_BACKBONE = [
    "model.backbone.dim=32",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.dropout=0.0",
    "model.backbone.max_positions=128",
]
TINY_DATA = ["data.vocab_size=512", "data.batch_size=16", "data.eval_batch_size=64"]
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}


def transformer(causal: bool, vocab_size: int = 300) -> dict:
    return {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": vocab_size,
        "dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "dropout": 0.0,
        "max_positions": 64,
        "causal": causal,
        "pad_token_id": 0,
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pydoc_cache")


@pytest.fixture(scope="module")
def pretrained(cache_dir, tmp_path_factory) -> dict[str, Path]:
    """A few steps of a tiny GPT, BERT and span-contrastive encoder on pydoc_text (vocabulary
    512)."""
    runs = {}
    for name in ("pydoc_gpt", "pydoc_bert", "pydoc_contrastive"):
        out = tmp_path_factory.mktemp(name)
        cfg = compose_train(
            [
                f"experiment={name}",
                f"data.cache_dir={cache_dir}",
                "data.vocab_size=512",
                "data.block_size=32",
                *TINY_BACKBONE,
                "trainer.max_steps=3",
                "trainer.limit_val_batches=1",
                "logger=none",
                "test=false",
                *QUIET,
            ],
            out,
        )
        train(cfg)
        runs[name] = out
    return runs


def test_framing_puts_the_loss_on_the_target_and_its_eos_only(cache_dir):
    from ptft.data.pydoc_corpus import build_corpus
    from ptft.data.text import cached_tokenizer

    tokenizer = load_tokenizer(cached_tokenizer(cache_dir, build_corpus(cache_dir), 512, 0))
    pairs = [("Return the absolute version of a path.", "abspath"), ("Close the file.", "close")]
    framed = [frame_pair(tokenizer, p, t, max_length=64) for p, t in pairs]
    tokens, labels = GenerationExamples.collate(framed)
    for row, (prompt, target) in enumerate(pairs):
        ids = tokens[row].tolist()
        assert ids[0] == EOS_ID and tokenizer.decode(ids[1 : ids.index(SEP_ID)]) == prompt
        scored = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert scored[-1] == EOS_ID and tokenizer.decode(scored[:-1]) == target
        # each scored label is the token after its position: next-token prediction
        positions = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert [ids[p + 1] for p in positions] == scored
        assert ids[positions[0]] == SEP_ID
    assert (tokens[1, len(framed[1][0]) :] == PAD_ID).all()
    # too long: the prompt is cut, the name never
    ids, start = frame_pair(tokenizer, "word " * 100, "abspath", max_length=16)
    assert len(ids) == 16 and tokenizer.decode(ids[start:-1]) == "abspath"
    assert (
        frame_text(tokenizer, "word " * 100, 16)[-1] == EOS_ID
        and len(frame_text(tokenizer, "a " * 100, 16)) == 16
    )


def test_pooling_reads_first_last_real_and_mean_of_real_tokens():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 4)
    lengths = [5, 2, 3]
    mask = torch.tensor([[i < n for i in range(5)] for n in lengths])
    assert torch.equal(pool(features, mask, "first"), features[:, 0])
    assert torch.equal(
        pool(features, mask, "last"),
        torch.stack([features[b, n - 1] for b, n in enumerate(lengths)]),
    )
    mean = torch.stack([features[b, :n].sum(0) / n for b, n in enumerate(lengths)])
    assert torch.allclose(pool(features, mask, "mean"), mean)


@pytest.mark.parametrize(
    "causal, pooling", [(True, "last"), (False, "first"), (True, "mean"), (False, "mean")]
)
def test_sequence_classifier_logits_do_not_depend_on_padding(causal, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(
        transformer(causal),
        [32],
        num_classes=3,
        optimizer=ADAMW,
        pooling="auto" if pooling != "mean" else "mean",
        head_dropout=0.0,
    ).eval()
    assert model.pooling == pooling
    short = torch.randint(7, 300, (1, 6))
    padded = torch.cat([short, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(short), model(padded), atol=1e-5)


def test_generator_loss_is_the_cross_entropy_of_the_target_tokens_only():
    torch.manual_seed(0)
    model = SequenceGenerator(transformer(True), [32], optimizer=ADAMW)
    framed = [
        ([EOS_ID, 10, 11, 12, SEP_ID, 20, 21, EOS_ID], 5),
        ([EOS_ID, 13, SEP_ID, 22, EOS_ID], 3),
    ]
    batch = GenerationExamples.collate(framed)
    loss, count, _ = token_cross_entropy(*model.logits_and_labels(batch, "train"))
    logits = model(batch[0])
    terms = [
        F.cross_entropy(logits[b, p], torch.tensor(ids[p + 1]))
        for b, (ids, start) in enumerate(framed)
        for p in range(start - 1, len(ids) - 1)
    ]
    assert count == len(terms) == 3 + 2
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)
    prompts, targets = split_pairs(*batch)
    assert prompts == [[EOS_ID, 10, 11, 12, SEP_ID], [EOS_ID, 13, SEP_ID]]
    assert targets == [[20, 21, EOS_ID], [22, EOS_ID]]


def test_a_generator_that_learnt_its_pairs_decodes_them_exactly():
    torch.manual_seed(0)
    model = SequenceGenerator(transformer(True), [32], optimizer=ADAMW)
    framed = [
        ([EOS_ID, 10 + i, 30 + i, SEP_ID, 100 + 2 * i, 101 + 2 * i, EOS_ID], 4) for i in range(4)
    ]
    batch = GenerationExamples.collate(framed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss, _, _ = token_cross_entropy(*model.logits_and_labels(batch, "train"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prompts, targets = split_pairs(*batch)
    assert generate(model, prompts, 8, stop_ids=model.stop_ids) == targets


def test_package_data_has_every_label_in_every_split_and_a_stratified_subset(cache_dir, tmp_path):
    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"data.cache_dir={cache_dir}",
            *TINY_DATA,
            "data.label_fraction=0.1",
        ],
        tmp_path,
    )
    datamodule = build_datamodule(plain(cfg.data), supervised=True)
    datamodule.setup("fit")
    full = build_datamodule({**plain(cfg.data), "label_fraction": 1.0}, supervised=True)
    full.setup("fit")
    assert len(datamodule.label_names) == 10
    for split in ("val", "test"):
        assert set(datamodule.datasets[split].labels) == set(range(10))
    counts, full_counts = (
        Counter(datamodule.datasets["train"].labels),
        Counter(full.datasets["train"].labels),
    )
    for label, n in full_counts.items():
        assert abs(counts[label] - 0.1 * n) <= 1  # stratified: each class keeps its share
    saved = list(Path(cache_dir).glob("package-labels-*-k10.json"))
    assert len(saved) == 1 and saved[0].read_text().count('"') == 20


@pytest.mark.parametrize(
    ("objective", "causal"),
    [("pydoc_gpt", True), ("pydoc_bert", False), ("pydoc_contrastive", False)],
)
def test_classifier_fine_tunes_from_a_pretrained_backbone_with_its_tokenizer(
    objective, causal, pretrained, cache_dir, tmp_path
):
    gpt = pretrained[objective]
    gpt_ckpt = torch.load(gpt / "checkpoints" / "last.ckpt", weights_only=True)
    # data.vocab_size stays 8192: with the pretraining tokenizer (512 tokens) the ids fit the
    # backbone
    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"data.cache_dir={cache_dir}",
            f"model.pretrained={gpt}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "logger=none",
            *QUIET,
        ],
        tmp_path,
    )
    model = build_model(plain(cfg.model))
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, gpt_ckpt["state_dict"][f"backbone.{name}"]), name
    assert model.pooling == "mean" and model.backbone.vocab_size == 512  # the experiment's
    assert model.backbone.causal is causal
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "tokenizer.json").read_text() == gpt_ckpt["ptft_tokenizer"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["ptft_tokenizer"] == gpt_ckpt["ptft_tokenizer"]
    assert len(ckpt["ptft_labels"]) == 10 and ckpt["hyper_parameters"]["num_classes"] == 10
    # the run records which corpus it read: the Python version and the content hash
    from ptft.data.pydoc_corpus import build_corpus

    corpus = build_corpus(cache_dir).manifest
    manifest = json.loads((tmp_path / "data_manifest.json").read_text())
    assert (
        manifest["python_version"]
        == platform.python_version()
        == ckpt["ptft_data_manifest"]["python_version"]
    )
    assert (
        manifest["content_hash"]
        == corpus["content_hash"]
        == ckpt["ptft_data_manifest"]["content_hash"]
    )


def test_generator_takes_the_whole_gpt_and_refuses_a_bert(pretrained, cache_dir, tmp_path, caplog):
    gpt_ckpt = torch.load(pretrained["pydoc_gpt"] / "checkpoints" / "last.ckpt", weights_only=True)
    cfg = compose_train(
        ["experiment=pydoc_name_generator", f"model.pretrained={pretrained['pydoc_gpt']}"], tmp_path
    )
    with caplog.at_level("INFO", logger="ptft.handoff"):
        model = build_model(plain(cfg.model))
    # the tied head is neither new nor skipped: it is the loaded embedding
    assert "new: 0 tensors (none); skipped from the checkpoint: 0 tensors (none)" in caplog.text
    # the output layer is tied to the embedding, so the pretrained head comes along
    assert torch.equal(
        model.lm_head.weight, gpt_ckpt["state_dict"]["backbone.token_embedding.weight"]
    )

    bert = compose_train(
        ["experiment=pydoc_name_generator", f"model.pretrained={pretrained['pydoc_bert']}"],
        tmp_path,
    )
    with pytest.raises(
        ConfigError,
        match=r"model.pretrained=.*needs a causal .* masked-LM backbone\); "
        r"pretrain with model=causal_lm",
    ):
        build_model(plain(bert.model))


def test_a_backbone_with_fewer_positions_than_the_data_is_a_clear_error(pretrained, tmp_path):
    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"model.pretrained={pretrained['pydoc_gpt']}",
            "data.max_length=200",
        ],
        tmp_path,
    )
    with pytest.raises(
        ConfigError, match=r"model.pretrained=.*max_positions=128, got input_shape=\[200\]"
    ):
        build_model(plain(cfg.model))


def test_a_different_explicit_tokenizer_is_refused(pretrained, cache_dir, tmp_path):
    other = tmp_path / "other.json"
    bert_tokenizer = torch.load(
        pretrained["pydoc_bert"] / "checkpoints" / "last.ckpt", weights_only=True
    )
    other.write_text(bert_tokenizer["ptft_tokenizer"].replace('"<mask>"', '"<maskX>"', 1))
    cfg = compose_train(
        [
            "experiment=pydoc_package_classifier",
            f"data.cache_dir={cache_dir}",
            f"model.pretrained={pretrained['pydoc_gpt']}",
            f"data.tokenizer={other}",
            *QUIET,
        ],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match="is not the tokenizer .* drop data.tokenizer"):
        train(cfg)


@pytest.mark.parametrize("experiment", ["pydoc_package_classifier", "pydoc_name_generator"])
def test_fine_tuning_experiments_take_a_fast_dev_run_step(experiment, cache_dir, tmp_path):
    cfg = compose_train(
        [
            f"experiment={experiment}",
            "debug=fdr",
            f"data.cache_dir={cache_dir}",
            *TINY_DATA,
            *QUIET,
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if experiment == "pydoc_package_classifier":
        assert 0.0 <= metrics["test/acc"] <= 1.0 and 0.0 <= metrics["test/f1"] <= 1.0
    else:
        assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-4)
        assert 0.0 <= metrics["test/token_acc"] <= 1.0 and 0.0 <= metrics["test/exact_match"] <= 1.0


def test_eval_of_a_fine_tuned_text_checkpoint_matches_its_test_stage(
    pretrained, cache_dir, tmp_path
):
    from ptft.evaluation.report import evaluate

    run = tmp_path / "run"
    cfg = compose_train(
        [
            "experiment=pydoc_name_generator",
            f"data.cache_dir={cache_dir}",
            f"model.pretrained={pretrained['pydoc_gpt']}",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "logger=none",
            "callbacks.model_checkpoint.monitor=null",
            *QUIET,
        ],
        run,
    )
    metrics = train(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    (run / "tokenizer.json").unlink()  # the checkpoint alone must do
    eval_cfg = compose_train(
        [
            f"ckpt_path={ckpt}",
            "logger=none",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "eval",
        config_name="eval",
    )
    evaluated = evaluate(eval_cfg)
    keys = ("test/loss", "test/ppl", "test/token_acc", "test/exact_match", "test/exact_count")
    for key in (*keys, "test/word_f1"):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-5), key
    assert metrics["test/exact_match"] <= metrics["test/word_f1"] <= 1.0  # an exact hit scores 1
