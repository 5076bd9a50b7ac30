"""Language-model pretraining on the docstring corpus: data, tied head, losses, perplexity,
checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptft.callbacks.run_record import RunRecord
from ptft.data.masking import IGNORE_INDEX, mask_tokens
from ptft.data.text import PydocTextDataModule
from ptft.errors import ConfigError
from ptft.nn.decoding import generate
from ptft.objectives.losses import token_cross_entropy
from ptft.runs.build import build_datamodule, build_model, build_trainer, plain
from ptft.runs.fit import train
from tests.helpers import QUIET, TINY_TEXT_MODEL, compose_train

#: a tiny model on short blocks: the in-process fits below take a second or two


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One corpus/tokenizer cache for the whole module (built by the first test that needs it)."""
    return tmp_path_factory.mktemp("pydoc_cache")


@pytest.mark.parametrize("experiment", ["pydoc_gpt", "pydoc_bert"])
def test_experiment_takes_a_step_from_uniform_predictions(experiment, cache_dir, tmp_path):
    cfg = compose_train(
        [f"experiment={experiment}", "debug=fdr", f"data.cache_dir={cache_dir}", *QUIET], tmp_path
    )
    metrics = train(cfg)
    # GPT-2 init with a tied head gives near-uniform predictions: loss ≈ ln(vocab), for
    # next tokens and masked tokens alike (2048 is a count of tokens, not a code constant)
    assert cfg.data.vocab_size == 2048
    assert metrics["train/loss"] == pytest.approx(math.log(2048), abs=0.1)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-4)
    if experiment == "pydoc_bert":
        # at init the kept-unchanged 10% of chosen tokens are about all it gets right
        assert 0.0 <= metrics["val/masked_acc"] < 0.2


@pytest.fixture(scope="module")
def gpt_run(cache_dir, tmp_path_factory):
    """A 30-step causal LM fit with checkpoints; returns (model, datamodule, trainer, output
    dir)."""
    out = tmp_path_factory.mktemp("gpt")
    cfg = compose_train(
        [
            "experiment=pydoc_gpt",
            f"data.cache_dir={cache_dir}",
            *TINY_TEXT_MODEL,
            "trainer.max_steps=30",
            "trainer.val_check_interval=30",
            "trainer.limit_val_batches=2",
            "logger=none",
            "model.optimizer.lr=3e-3",
            *QUIET,
        ],
        out,
    )
    torch.manual_seed(0)
    model = build_model(plain(cfg.model))
    datamodule = build_datamodule(plain(cfg.data), supervised=False)
    trainer = build_trainer(cfg, [RunRecord({}, out)])
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule, trainer, out


def test_lm_head_is_the_token_embedding(gpt_run):
    model = gpt_run[0]
    embedding = model.backbone.token_embedding.weight
    assert model.lm_head.weight is embedding and model.lm_head.bias is None
    assert model.lm_head.weight.data_ptr() == embedding.data_ptr()
    # the head adds no parameter of its own
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in model.backbone.parameters()
    )
    tokens = torch.tensor([[10, 11, 12]])
    before = model(tokens)[0, -1, 100].item()
    with torch.no_grad():
        embedding[100] += 1.0  # only the embedding is touched; the head's score for token 100 moves
    assert model(tokens)[0, -1, 100].item() != pytest.approx(before)
    with torch.no_grad():
        embedding[100] -= 1.0


def test_checkpoint_carries_the_tokenizer(gpt_run):
    _, datamodule, _, out = gpt_run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert json.loads(ckpt["ptft_tokenizer"]) == json.loads(
        Path(datamodule.tokenizer_path).read_text()
    )
    assert ckpt["ptft_backbone"]["config"]["causal"] is True
    assert ckpt["ptft_backbone"]["config"]["vocab_size"] == 512
    state = ckpt["state_dict"]
    assert torch.equal(state["lm_head.weight"], state["backbone.token_embedding.weight"])


def test_val_ppl_is_exp_of_the_token_mean_loss(gpt_run):
    model, datamodule, trainer, _ = gpt_run
    logged = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    # independent computation: the two val batches, scored by hand with the embedding as output
    # layer
    model.eval()
    losses, counts = [], []
    with torch.no_grad():
        for _, batch in zip(range(2), datamodule.val_dataloader(), strict=False):
            h = model.backbone(batch[:, :-1])
            logits = h @ model.backbone.token_embedding.weight.T
            losses.append(
                F.cross_entropy(
                    logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"
                ).item()
            )
            counts.append(batch[:, 1:].numel())
    mean = sum(losses) / sum(counts)
    assert logged["val/loss"] == pytest.approx(mean, rel=1e-6)
    assert logged["val/ppl"] == pytest.approx(math.exp(mean), rel=1e-6)
    # and the mean of per-batch perplexities would differ: the check above can tell them apart
    # (two batches of one corpus differ little: 6e-6 relative on split_version 3)
    per_batch_ppl = sum(math.exp(s / c) for s, c in zip(losses, counts, strict=True)) / 2
    assert abs(per_batch_ppl - math.exp(mean)) > 2e-6 * math.exp(mean)
    assert logged["val/loss"] < math.log(512) - 0.5  # 30 steps learnt something


def test_greedy_generation_with_kv_cache_matches_full_recompute(gpt_run):
    model = gpt_run[0].eval()
    prompt = [3, 40, 41, 42]
    generated = generate(model, [list(prompt)], 8)[0]
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert generated == tokens[len(prompt) :]


def test_masked_loss_counts_only_masked_positions(cache_dir, tmp_path):
    cfg = compose_train(
        ["experiment=pydoc_bert", f"data.cache_dir={cache_dir}", *TINY_TEXT_MODEL], tmp_path
    )
    torch.manual_seed(0)
    model = build_model(plain(cfg.model)).eval()
    batch = torch.randint(7, 512, (4, 33))
    batch[:, 5] = 3  # an <eos>: special tokens are never chosen
    model._reseed("train", 5)
    replay = torch.Generator().set_state(model.generators["train"].get_state())
    logits, labels = model.logits_and_labels(batch, "train")
    inputs, expected_labels = mask_tokens(batch[:, :-1], 512, replay)
    assert torch.equal(labels, expected_labels)
    chosen = labels != IGNORE_INDEX
    assert 0 < chosen.sum() < chosen.numel() // 4 and not chosen[:, 5].any()
    loss = token_cross_entropy(logits, labels)[0]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(inputs), dim=-1)
    manual = -log_probs[chosen].gather(1, labels[chosen][:, None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    everywhere = -log_probs.gather(2, batch[:, :-1, None]).mean()  # what an unmasked loss would be
    assert abs(everywhere.item() - manual.item()) > 1e-3


def test_datamodule_reuses_its_tokenizer_and_serves_shifted_blocks(cache_dir):
    first = PydocTextDataModule(str(cache_dir), input_shape=[32], vocab_size=512, block_size=32)
    first.prepare_data()
    stamp = Path(first.tokenizer_path).stat().st_mtime_ns
    second = PydocTextDataModule(
        str(cache_dir), input_shape=[32], vocab_size=512, block_size=32, with_labels=True
    )
    second.setup("fit")
    assert (
        second.tokenizer_path == first.tokenizer_path
        and Path(second.tokenizer_path).stat().st_mtime_ns == stamp
    )
    batch = next(iter(second.val_dataloader()))
    assert batch.shape == (64, 33) and batch.dtype == torch.long
    blocks = second.val_dataloader().dataset
    assert torch.equal(blocks[0][-1:], blocks[1][:1])  # the extra token is the next block's first
    with pytest.raises(ConfigError, match="block_size"):
        PydocTextDataModule(str(cache_dir), input_shape=[16], block_size=32)
