"""Text generation: greedy and sampled decoding against naive computations, and ptft-generate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ptft.cli import config_dir
from ptft.data.tokenizer import EOS_ID, MIN_VOCAB_SIZE, train_tokenizer
from ptft.errors import ConfigError
from ptft.nn.decoding import filter_logits, generate, next_tokens, stop_reason
from ptft.objectives.causal_lm import CausalLM
from ptft.objectives.masked_lm import MaskedLM
from ptft.runs.fit import train
from ptft.runs.generate import generate_text, load_generator
from tests.helpers import QUIET, TINY_TEXT_MODEL, compose_train, run_cli

OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
VOCAB, MAX_POSITIONS = 300, 64


def tiny_lm(
    positions: str = "sinusoidal", dropout: float = 0.0, causal: bool = True, seed: int = 0
):
    """A 2-layer LM with weights large enough that its argmax is decisive (no near ties)."""
    torch.manual_seed(seed)
    backbone = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": VOCAB,
        "dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "max_positions": MAX_POSITIONS,
        "positions": positions,
        "causal": causal,
        "dropout": dropout,
    }
    cls = CausalLM if causal else MaskedLM
    model = cls(backbone=backbone, input_shape=[16], optimizer=OPTIMIZER)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:  # the GPT-2 init (std 0.02) leaves logits nearly uniform
                p.normal_(0.0, 0.3 if "embedding" in name else 0.5)
    return model.eval()


def naive_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding with no cache: the whole (left-truncated) sequence is re-run every step."""
    tokens = list(prompt)[-(MAX_POSITIONS - 1) :]
    new: list[int] = []
    with torch.no_grad():
        while len(new) < max_new_tokens and len(tokens) < MAX_POSITIONS:
            new.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
            tokens.append(new[-1])
    return new


def random_prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(7, VOCAB, (n,), generator=g).tolist() for n in lengths]


# ---------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
def test_greedy_equals_full_recompute_for_a_batch_of_lengths(positions):
    model = tiny_lm(positions)
    prompts = random_prompts([1, 4, 4, 7, 4, 12])
    got = generate(model, prompts, max_new_tokens=10)
    assert got == [naive_greedy(model, p, 10) for p in prompts]
    assert all(len(ids) == 10 for ids in got)
    assert len({tuple(ids) for ids in got}) > 1  # the prompts matter: not one fixed continuation


def test_context_limit_truncates_the_prompt_from_the_left():
    model = tiny_lm()
    prompts = random_prompts([60, 63, 80])
    got = generate(model, prompts, max_new_tokens=10)
    # 60 + 4 = 64 positions; a prompt of 63 or more keeps its last 63 tokens and gets one new token
    assert [len(ids) for ids in got] == [4, 1, 1]
    assert got == [naive_greedy(model, p, 10) for p in prompts]
    assert got[2] == naive_greedy(model, prompts[2][-63:], 10)
    assert [stop_reason(ids, 10) for ids in got] == ["max_positions"] * 3


def test_eval_mode_while_decoding_and_training_mode_restored():
    model = tiny_lm(dropout=0.5)
    prompts = random_prompts([3, 5])
    expected = [naive_greedy(model, p, 6) for p in prompts]  # model is in eval mode: no dropout
    model.train()
    assert generate(model, prompts, 6) == expected
    assert model.training and model.backbone.blocks[0].training


def test_stop_id_ends_its_row_and_is_included():
    model = tiny_lm()
    prompts = random_prompts([5, 5, 5, 2, 9])
    free = generate(model, prompts, max_new_tokens=12)
    # a stop id that row 0 first emits at step 3, so rows stop at different steps
    stop = next(t for i, t in enumerate(free[0]) if i >= 2 and t not in free[0][:i])
    stopped = generate(model, prompts, max_new_tokens=12, stop_ids=[stop])
    for row, ids in zip(free, stopped, strict=True):
        expected = row[: row.index(stop) + 1] if stop in row else row
        assert ids == expected
    assert stopped[0][-1] == stop and stop not in stopped[0][:-1]
    assert stop_reason(stopped[0], 12, [stop]) == "stop_id"
    assert len(stopped[0]) < 12


def test_max_new_tokens_is_respected():
    model = tiny_lm()
    prompts = random_prompts([2, 6])
    assert generate(model, prompts, 0) == [[], []]
    assert [len(ids) for ids in generate(model, prompts, 3, temperature=1.0)] == [3, 3]
    assert generate(model, prompts, 3) == [ids[:3] for ids in generate(model, prompts, 8)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"prompts": [[5, 6], []]}, "prompt 1 is empty"),
        ({"prompts": [[5, VOCAB]]}, "outside the vocabulary"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    args = {"prompts": [[5, 6]], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tiny_lm(), **args)


def test_masked_lm_cannot_generate():
    with pytest.raises(
        ValueError, match="generation needs a causal .GPT-style. backbone; a masked-LM"
    ):
        generate(tiny_lm(causal=False), [[5, 6]], 4)


# -------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_1_is_greedy_at_any_temperature(temperature):
    model = tiny_lm()
    prompts = random_prompts([3, 3, 8])
    g = torch.Generator().manual_seed(0)
    assert generate(model, prompts, 8, temperature=temperature, top_k=1, generator=g) == generate(
        model, prompts, 8
    )


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny_lm()
    prompts = random_prompts([3, 3, 8, 1])

    def sample(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompts, 10, temperature=3.0, top_p=0.95, generator=g)

    first = sample(123)
    assert sample(123) == first
    assert sample(124) != first
    assert first != generate(model, prompts, 10)  # and it is not greedy


def nucleus_reference(probs: list[float], p: float) -> set[int]:
    """Indices of the smallest set of most likely tokens whose mass reaches p (python floats)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        if mass >= p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.1, {2}),
        (0.5, {2}),
        (0.7499, {2, 0}),
        (0.7501, {2, 0, 3}),
        (0.87, {2, 0, 3}),
        (0.95, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    probs = [0.25, 0.0625, 0.5, 0.125, 0.0625]  # sorted: token 2, 0, 3, then 1 and 4
    logits = torch.tensor([probs]).log()
    kept = set(torch.isfinite(filter_logits(logits, top_p=p))[0].nonzero().squeeze(-1).tolist())
    assert kept == expected == nucleus_reference(probs, p)


def test_top_k_and_top_p_on_random_distributions_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(6, 40)).astype(np.float32)
    for top_k, top_p in [(None, 0.3), (None, 0.9), (5, None), (10, 0.6), (3, 0.99)]:
        got = torch.isfinite(filter_logits(torch.from_numpy(logits), top_k, top_p)).numpy()
        for row, keep in zip(logits.astype(np.float64), got, strict=True):
            allowed = np.argsort(-row)[: top_k or len(row)]
            expected = set(allowed.tolist())
            if top_p is not None:
                sub = np.exp(row[allowed] - row[allowed].max())
                sub /= sub.sum()
                before = np.cumsum(sub) - sub  # mass of the more likely tokens
                expected = set(allowed[(before < top_p) | (np.arange(len(allowed)) == 0)].tolist())
            assert set(np.flatnonzero(keep).tolist()) == expected


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampled_frequencies_match_the_tempered_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 4000
    g = torch.Generator().manual_seed(0)
    samples = next_tokens(logits.expand(n, -1), temperature=temperature, generator=g)
    freq = np.bincount(samples.numpy(), minlength=5) / n
    expected = np.exp(logits.numpy() / temperature)
    expected /= expected.sum()
    # 4000 draws: the standard error of each frequency is at most 0.008
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_first_tokens_of_the_model_follow_softmax_over_temperature():
    model = tiny_lm()
    prompt = [9, 17, 33]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1].double()
    g = torch.Generator().manual_seed(1)
    firsts = [ids[0] for ids in generate(model, [prompt] * 4000, 1, temperature=0.5, generator=g)]
    freq = np.bincount(firsts, minlength=VOCAB) / 4000
    expected = torch.softmax(logits / 0.5, -1).numpy()
    assert 0.1 < expected.max() < 0.5  # a spread distribution, yet far from uniform
    np.testing.assert_allclose(freq, expected, atol=0.03)
    # the check can tell temperatures apart: at T=1 the most likely token would be far rarer
    assert np.abs(freq - torch.softmax(logits, -1).numpy()).max() > 0.1


def test_causal_lm_prompt_starts_a_document_and_stops_at_eos():
    tokenizer = train_tokenizer(
        ["Return the value.", "This module does things."] * 5, vocab_size=MIN_VOCAB_SIZE
    )
    model = tiny_lm()
    assert model.prompt_ids(tokenizer, "Return the") == [
        EOS_ID,
        *tokenizer.encode("Return the").ids,
    ]
    assert model.prompt_ids(tokenizer, "") == [EOS_ID]
    assert model.stop_ids == (EOS_ID,)


# ----------------------------------------------------------------------- ptft-generate
TINY_TEXT = [
    *TINY_TEXT_MODEL,
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "test=false",
    "logger=none",
    *QUIET,
]


@pytest.fixture(scope="module")
def text_ckpts(tmp_path_factory) -> dict[str, Path]:
    """``last.ckpt`` of a 2-step GPT and a 2-step BERT on the docstrings (tiny, a few seconds)."""
    cache = tmp_path_factory.mktemp("pydoc_cache")
    ckpts = {}
    for experiment in ("pydoc_gpt", "pydoc_bert"):
        out = tmp_path_factory.mktemp(experiment)
        train(
            compose_train([f"experiment={experiment}", f"data.cache_dir={cache}", *TINY_TEXT], out)
        )
        ckpts[experiment] = out / "checkpoints" / "last.ckpt"
    return ckpts


def read_generations(root: Path) -> list[dict]:
    (path,) = (root / "outputs" / "generate" / "runs").glob("*/generations.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ptft_generate_greedy_equals_in_process_generate(text_ckpts, tmp_path):
    ckpt = text_ckpts["pydoc_gpt"]
    prompts = ["Return the", "This module"]
    result = run_cli(
        [
            "ptft.generate",
            f"ckpt_path={ckpt}",
            'prompts=["Return the","This module"]',
            "max_new_tokens=12",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = read_generations(tmp_path)
    module, tokenizer = load_generator(ckpt)
    expected = generate(
        module, [module.prompt_ids(tokenizer, p) for p in prompts], 12, stop_ids=module.stop_ids
    )
    assert [line["prompt"] for line in lines] == prompts
    assert [line["token_ids"] for line in lines] == expected
    for line, ids in zip(lines, expected, strict=True):
        assert line["completion"] == tokenizer.decode(ids, skip_special_tokens=True)
        assert line["num_tokens"] == len(ids) and line["sample"] == 0
        assert line["stop_reason"] == stop_reason(ids, 12, (EOS_ID,))
        # the subprocess's stdout was read with universal newlines
        printed = (line["prompt"] + line["completion"]).replace("\r\n", "\n").replace("\r", "\n")
        assert printed in result.stdout


def test_ptft_generate_samples_are_seeded(text_ckpts, tmp_path):
    ckpt = text_ckpts["pydoc_gpt"]
    args = [
        "temperature=0.8",
        "top_k=50",
        "top_p=0.95",
        "num_samples=3",
        "seed=7",
        "max_new_tokens=8",
    ]
    result = run_cli(
        ["ptft.generate", f"ckpt_path={ckpt}", "prompt=Return the", *args], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = read_generations(tmp_path)
    module, tokenizer = load_generator(ckpt)
    g = torch.Generator().manual_seed(7)
    ids = module.prompt_ids(tokenizer, "Return the")
    expected = generate(module, [ids] * 3, 8, 0.8, 50, 0.95, stop_ids=module.stop_ids, generator=g)
    assert [line["token_ids"] for line in lines] == expected
    assert [line["sample"] for line in lines] == [0, 1, 2]
    assert len({tuple(e) for e in expected}) > 1  # three different samples


def test_ptft_generate_errors_are_one_line(text_ckpts, tmp_path):
    missing = run_cli(
        ["ptft.generate", f"ckpt_path={tmp_path / 'nope.ckpt'}", "prompt=x"], cwd=tmp_path
    )
    assert missing.returncode != 0
    assert (
        missing.stderr.strip()
        == f"error: ckpt_path={tmp_path / 'nope.ckpt'}: no such checkpoint file"
    )
    no_prompt = run_cli(["ptft.generate", f"ckpt_path={text_ckpts['pydoc_gpt']}"], cwd=tmp_path)
    assert no_prompt.returncode != 0
    assert (
        no_prompt.stderr.strip()
        == 'error: no prompt given: pass prompt="..." or prompts=["...","..."]'
    )
    bert = run_cli(
        ["ptft.generate", f"ckpt_path={text_ckpts['pydoc_bert']}", "prompt=x"], cwd=tmp_path
    )
    assert bert.returncode != 0
    message = bert.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "ptft.objectives.masked_lm.MaskedLM" in message
    assert "generation needs a causal_lm or sequence_generator checkpoint" in message
    assert "Traceback" not in bert.stderr
    assert not list(tmp_path.glob("outputs/generate/runs/*/generations.jsonl"))


def test_checkpoint_without_tokenizer_and_missing_prompt(text_ckpts, tmp_path):
    checkpoint = torch.load(text_ckpts["pydoc_gpt"], weights_only=True)
    del checkpoint["ptft_tokenizer"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(ConfigError, match="carries no tokenizer; it was not trained on text"):
        load_generator(bare)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "generate",
            overrides=[f"ckpt_path={text_ckpts['pydoc_gpt']}", f"paths.output_dir={tmp_path}"],
        )
    with pytest.raises(ConfigError, match="no prompt given"):
        generate_text(cfg)


def test_help_and_cfg_job_do_not_import_torch(tmp_path):
    code = (
        "import runpy, sys\n"
        "for argv in (['--cfg', 'job', 'ckpt_path=x.ckpt', 'prompt=Return the'], ['--help']):\n"
        "    sys.argv = ['ptft-generate', *argv]\n"
        "    try:\n        runpy.run_module('ptft.generate', run_name='__main__')\n"
        "    except SystemExit as e:\n        assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "prompt: Return the" in result.stdout and "max_new_tokens: 64" in result.stdout
    assert "temperature: 0.0" in result.stdout and "top_p: null" in result.stdout
