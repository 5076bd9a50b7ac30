"""Training throughput (tokens/s) and MFU of ptft's causal LM, a hand loop and Hugging Face GPT-2.

Three paths train the same GPT-sized model on random token blocks, side by side in one process:

1. **ptft** — what a user runs: ``experiment=pydoc_gpt`` composed with Hydra (the bench's
   sizes, dropout 0; no logger, callbacks, checkpointing, progress bar or validation), built
   with ``ptft.runs.build.build_model`` and ``ptft.runs.build.build_trainer``, trained by
   ``Trainer.fit``.
2. **hand** — the same model class in a plain PyTorch loop (forward, ``F.cross_entropy`` on
   fp32 logits, backward, gradient clipping, AdamW step, zero_grad), what one writes by hand:
   1/2 is what the framework costs, less what ptft's own code saves (its chunked fp32 loss,
   ``ptft.objectives.losses.token_loss``, which this loop does not use).
3. **hf** — ``transformers.GPT2LMHeadModel`` of identical sizes (random init, nothing downloaded,
   SDPA attention, dropout 0) in the very same loop: a peer users would otherwise pick.

Each runs in fp32 and in bf16 autocast (``trainer.precision=bf16-mixed`` for path 1).

The machine these figures come from has 2 cores shared with other people's jobs, and
contention comes and goes within a minute, so the paths are interleaved step by step: a
callback of the one ``Trainer.fit`` per dtype runs, after every ptft step, one step of each
other path on the same batch (their order alternating) and one matmul of the peak
measurement. Each path's step time is the median of its timed steps; the table also gives
the best step (contention only ever slows a step down) and the ratios paired round by round.
A ptft step is timed from the end of the previous round to the end of its own batch, so it
includes all of Lightning's work between batches (fetch, hooks, scheduler).

FLOPs per token (the basis of MFU, the same formula for all three paths)::

    6·N + 12·L·H·Q·T  +  6·d·V
    Transformer.flops_per_token(T)   the tied LM head
    └──────── LanguageModel.flops_per_token(T): what the throughput callback counts ────────┘

N counts non-embedding parameters (Kaplan et al. 2020; biases and LayerNorms included), and
HF GPT-2's N is counted the same way from its parameters (``wte``/``wpe`` left out); the bench
checks that the two agree. The output projection of the tied head is a real (B·T×d)·(d×V)
matmul in forward and twice that in backward, so it is counted, as 6·d·V per token (the same
FLOPs nanoGPT's estimate_mfu counts by keeping the tied matrix in N); the input embedding is a
lookup and is not. The column "no head" gives MFU without it (the strict Kaplan 6N).
MFU divides by a 2048³ matmul's FLOP/s (2·n³/t, ``ptft.monitors.flops.matmul_flops``) measured
in the same run and dtype.

    python bench/lm_throughput.py                  # dim 512, 6 layers, 8 heads, T=256, B=8
    python bench/lm_throughput.py --quick          # tiny smoke run (seconds)
    python bench/lm_throughput.py --no-hf          # paths 1-2 only (no transformers needed)

``torch.set_num_threads`` is set explicitly (``--threads``, default 2: the cores of the machine
the figures in bench/README.md were taken on), for every path and the peak alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

PATHS = ("ptft", "hand", "hf")
LABELS = {"ptft": "1 ptft Trainer", "hand": "2 hand loop", "hf": "3 HF GPT-2"}
PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"ratio_hand": 0.97, "ratio_hf": 1.15, "mfu": {"fp32": 0.70, "bf16": 0.50}}
#: gradient clipping of experiment=pydoc_gpt, applied in the hand loop too (the same work per step)
CLIP = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=256, help="tokens per block the model reads (T)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--vocab", type=int, default=8192, help="vocabulary (pydoc_gpt's tokenizer: 8192)"
    )
    p.add_argument("--steps", type=int, default=8, help="timed rounds: one step of every path each")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (at least 1)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    p.add_argument(
        "--peak-size", type=int, default=2048, help="n of the n³ matmul that measures the peak"
    )
    p.add_argument("--peak-repeats", type=int, default=2, help="timed peak matmuls per round")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--hf-activation",
        default="gelu_new",
        help="GPT-2's activation_function: gelu_new (its default, the tanh approximation\n"
        "written as 8 elementwise ops) or gelu (exact, as ptft's)",
    )
    p.add_argument("--no-hf", action="store_true", help="skip path 3 (no transformers needed)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke run")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print every round's step times (stderr)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.layers, args.heads, args.seq, args.batch, args.vocab = 64, 2, 2, 32, 4, 512
        args.steps, args.warmup, args.peak_size, args.peak_repeats = 4, 1, 256, 2
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in args.dtypes if d not in DTYPE]
    if bad:
        p.error(f"unknown dtype(s) {bad}; choose from {list(DTYPE)}")
    if args.steps < 1 or args.warmup < 1 or args.peak_repeats < 1:
        p.error("--steps, --warmup and --peak-repeats must be >= 1")
    return args


# ----------------------------------------------------------------------------- measuring
def random_blocks(num_blocks: int, seq: int, vocab: int, seed: int) -> Tensor:
    """``(num_blocks, seq + 1)`` random token ids: the model reads ``[:-1]`` and predicts
    ``[1:]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (num_blocks, seq + 1), generator=generator)


def loader(blocks: Tensor, batch: int) -> DataLoader:
    """In-memory batches, as ptft's text datamodules serve them (no workers)."""
    return DataLoader(blocks, batch_size=batch, shuffle=False, drop_last=True)


# ----------------------------------------------------------------------------- path 1: ptft
def compose_ptft(args: argparse.Namespace, dtype: str, max_steps: int, output_dir: str) -> Any:
    """``experiment=pydoc_gpt`` with the bench's sizes: the config ``ptft-train`` would run,
    minus data (the bench feeds random blocks), logging, checkpointing and validation."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptft import config
    from ptft.cli import config_dir

    config.register()
    overrides = [
        "experiment=pydoc_gpt",
        f"data.block_size={args.seq}",
        f"data.batch_size={args.batch}",
        f"data.vocab_size={args.vocab}",
        f"model.backbone.dim={args.dim}",
        f"model.backbone.num_layers={args.layers}",
        f"model.backbone.num_heads={args.heads}",
        f"model.backbone.max_positions={args.seq}",
        "model.backbone.positions=learned",  # GPT-2's, so both models have the same shape
        "model.backbone.dropout=0.0",
        "logger=none",
        "callbacks=none",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        f"trainer.precision={PRECISION[dtype]}",
        f"trainer.max_steps={max_steps}",
        "trainer.max_epochs=1",
        "trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=0",
        f"paths.output_dir={output_dir}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# --------------------------------------------------------------------- paths 2 and 3: a loop
@dataclass
class Loop:
    """A model, its forward to logits and its optimizer, trained one step at a time by hand."""

    model: nn.Module
    logits: Callable[[Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    dtype: str

    def step(self, batch: Tensor) -> None:
        """Forward, cross-entropy, backward, clipping, AdamW step, zero_grad: plain PyTorch."""
        inputs, labels = batch[:, :-1], batch[:, 1:]
        bf16 = self.dtype == "bf16"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = self.logits(inputs)
        # the plain way to a loss in fp32; ptft's token_loss gives the same value and gradient
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def hf_gpt2(args: argparse.Namespace) -> nn.Module:
    """GPT-2 of the bench's sizes, random init: pre-LN blocks, learned positions, tied head,
    dropout 0, SDPA attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.seq,
        n_embd=args.dim,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=4 * args.dim,
        activation_function=args.hf_activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,  # training: no key/value cache to build
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config)
    implementation = getattr(model.config, "_attn_implementation", "sdpa")
    if implementation != "sdpa":
        warnings.warn(f"HF GPT-2 runs {implementation} attention, not SDPA", stacklevel=1)
    return model


def non_embedding_params(model: nn.Module, embedding_names: tuple[str, ...]) -> int:
    """Parameters outside the token and position embeddings (a tied head is the token embedding)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()  # lists a tied tensor once
        if not any(e in name for e in embedding_names)
    )


# ------------------------------------------------------------------------- interleaving
def interleaver(others: dict[str, Loop], peak_dtype: torch.dtype, args: argparse.Namespace) -> Any:
    """A Lightning callback that, after every ptft step, runs one step of each other path on
    the same batch and the peak matmuls, and times them all."""
    from lightning.pytorch.callbacks import Callback

    # the routine behind the throughput callback's measured peak (ptft.monitors.flops.measured_peak)
    from ptft.monitors.flops import matmul_flops

    class Interleave(Callback):
        def __init__(self) -> None:
            self.times: dict[str, list[float]] = {p: [] for p in ("ptft", *others)}
            self.peaks: list[float] = []
            self.start: float | None = None
            self.a = torch.randn(args.peak_size, args.peak_size, dtype=peak_dtype)
            self.b = torch.randn(args.peak_size, args.peak_size, dtype=peak_dtype)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            end = time.perf_counter()
            timed = batch_idx >= args.warmup
            if timed and self.start is not None:
                self.times["ptft"].append(end - self.start)
            names = list(others)
            for name in names if batch_idx % 2 == 0 else names[::-1]:  # neither always goes first
                start = time.perf_counter()
                others[name].step(batch)
                if timed:
                    self.times[name].append(time.perf_counter() - start)
            for _ in range(args.peak_repeats):
                rate = matmul_flops(self.a, self.b)
                if timed:
                    self.peaks.append(rate)
            if args.verbose and timed:
                line = " ".join(f"{p} {t[-1] * 1e3:.0f}" for p, t in self.times.items() if t)
                print(
                    f"  round {batch_idx - args.warmup + 1}: {line} ms", file=sys.stderr, flush=True
                )
            self.start = time.perf_counter()

    return Interleave()


def quiet() -> None:
    """Lightning's and transformers' start-up chatter would drown the table."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ptft.modules.backbone_module import instantiate_partial
    from ptft.runs.build import build_model, build_trainer, plain

    torch.set_num_threads(args.threads)
    quiet()
    rounds = args.warmup + args.steps
    blocks = random_blocks(args.batch * rounds, args.seq, args.vocab, seed=0)
    head = 6 * args.dim * args.vocab  # the tied output projection, per token
    attention = 12 * args.layers * args.dim * args.seq  # 12·L·H·Q·T with H·Q = dim
    out: dict[str, Any] = {
        "tokens_per_step": args.batch * args.seq,
        "times": {},
        "peak": {},
        "flops": {},
    }
    tmp = tempfile.TemporaryDirectory(prefix="ptft-bench-")
    load_before = os.getloadavg()[0]
    # every config is composed before anything runs, from one state of conf/
    cfgs = {dtype: compose_ptft(args, dtype, rounds, tmp.name) for dtype in args.dtypes}

    for dtype in args.dtypes:
        cfg = cfgs[dtype]
        model_cfg = plain(cfg.model)
        torch.manual_seed(0)
        ptft_model = build_model(model_cfg)
        torch.manual_seed(0)
        hand_model = build_model(model_cfg)  # the same class and init, trained by hand
        params = hand_model.trainable_parameters()
        optimizer = instantiate_partial(model_cfg["optimizer"], params)  # the same settings
        others = {"hand": Loop(hand_model, hand_model, optimizer, params, dtype)}
        n = hand_model.backbone.num_params()
        # the model's own count, as the throughput callback takes it: 6N + 12·L·H·Q·T + 6·d·V
        out["flops"]["ptft"] = out["flops"]["hand"] = hand_model.flops_per_token(args.seq)
        out["n"] = {"ptft": n}
        if not args.no_hf:
            torch.manual_seed(0)
            gpt2 = hf_gpt2(args)
            hf_params = [p for p in gpt2.parameters() if p.requires_grad]
            hf_optimizer = instantiate_partial(model_cfg["optimizer"], hf_params)
            others["hf"] = Loop(
                gpt2, lambda x, m=gpt2: m(input_ids=x).logits, hf_optimizer, hf_params, dtype
            )
            n_hf = non_embedding_params(gpt2, ("wte", "wpe"))
            out["flops"]["hf"] = 6 * n_hf + attention + head
            out["n"]["hf"] = n_hf
        for loop in others.values():
            loop.model.train()

        timer = interleaver(others, DTYPE[dtype], args)
        trainer = build_trainer(cfg, [timer])
        trainer.fit(ptft_model, train_dataloaders=loader(blocks, args.batch))
        if len(timer.times["ptft"]) != args.steps:
            raise RuntimeError(f"ptft ran {len(timer.times['ptft'])} timed steps, not {args.steps}")
        out["times"][dtype] = timer.times
        out["peak"][dtype] = {"median": statistics.median(timer.peaks), "best": max(timer.peaks)}
        print(f"  {dtype} done", file=sys.stderr, flush=True)
    tmp.cleanup()
    out["load"] = (load_before, os.getloadavg()[0])
    return out


# ----------------------------------------------------------------------------------- report
def report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """The table, then the ratios three ways: from the median step times (the figures of
    record), from the best steps, and paired (the median over rounds of each round's ratio)."""
    tokens, flops, n = out["tokens_per_step"], out["flops"], out["n"]
    before, after = out["load"]
    print(
        f"\n1-minute load average: {before:.2f} before the run, {after:.2f} after "
        f"(which counts this run's own {args.threads} threads)"
    )
    print(
        f"model: dim={args.dim} layers={args.layers} heads={args.heads} T={args.seq} "
        f"B={args.batch} vocab={args.vocab}; {args.steps} timed rounds "
        f"(+{args.warmup} warmup); threads={args.threads}"
    )
    print("N (non-embedding): " + ", ".join(f"{p} {v:,}" for p, v in n.items()))
    if len(set(n.values())) > 1:
        print("warning: the models' non-embedding parameter counts differ: not the same sizes")
    print("FLOPs/token = 6N + 12·L·H·Q·T + 6·d·V (tied head counted; 'no head' leaves out 6·d·V)")
    for dtype in args.dtypes:
        peak = out["peak"][dtype]
        print(
            f"peak {args.peak_size}^3 matmul {dtype}: {peak['median'] / 1e9:.1f} GFLOP/s median, "
            f"{peak['best'] / 1e9:.1f} best"
        )
    print(
        f"\n{'path':<16}{'dtype':<7}{'tokens/s':>10}{'ms/step':>9}{'MFU':>8}{'no head':>9}"
        f"{'spread':>8}{'best tok/s':>12}{'best MFU':>10}"
    )
    for dtype in args.dtypes:
        peak = out["peak"][dtype]
        for path, times in out["times"][dtype].items():
            med, best = statistics.median(times), min(times)
            mfu = tokens / med * flops[path] / peak["median"]
            mfu_no_head = tokens / med * (flops[path] - 6 * args.dim * args.vocab) / peak["median"]
            print(
                f"{LABELS[path]:<16}{dtype:<7}{tokens / med:>10.0f}{med * 1e3:>9.0f}{mfu:>8.1%}"
                f"{mfu_no_head:>9.1%}{(max(times) - best) / med:>8.0%}{tokens / best:>12.0f}"
                f"{tokens / best * flops[path] / peak['best']:>10.1%}"
            )
    print()
    for dtype in args.dtypes:
        times, peak = out["times"][dtype], out["peak"][dtype]
        ways = {
            "median": ({p: statistics.median(t) for p, t in times.items()}, peak["median"]),
            "best": ({p: min(t) for p, t in times.items()}, peak["best"]),
        }
        for kind, (step, peak_rate) in ways.items():
            parts = [f"1/2 = {step['hand'] / step['ptft']:.3f} (target >= {TARGETS['ratio_hand']})"]
            if "hf" in step:
                parts.append(f"1/3 = {step['hf'] / step['ptft']:.3f} (>= {TARGETS['ratio_hf']})")
            mfu = tokens / step["ptft"] * flops["ptft"] / peak_rate
            parts.append(f"ptft MFU {mfu:.1%} (>= {TARGETS['mfu'][dtype]:.0%})")
            print(f"{dtype} {kind:<7}: " + ", ".join(parts))
        hand_ratios = (h / p for h, p in zip(times["hand"], times["ptft"], strict=True))
        paired = [f"1/2 = {statistics.median(hand_ratios):.3f}"]
        if "hf" in times:
            hf_ratios = (h / p for h, p in zip(times["hf"], times["ptft"], strict=True))
            paired.append(f"1/3 = {statistics.median(hf_ratios):.3f}")
        print(f"{dtype} paired : " + ", ".join(paired))
    spreads = [
        (max(t) - min(t)) / statistics.median(t)
        for d in args.dtypes
        for t in out["times"][d].values()
    ]
    if before > 1.5 or max(spreads) > 0.25:
        print(
            f"\nnoisy: load {before:.2f} before the run, "
            f"step times spread up to {max(spreads):.0%}; "
            "other jobs shared the cores, run again when the machine is quiet"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_hf and importlib.util.find_spec("transformers") is None:
        print(
            "lm_throughput: transformers is not installed (pip install 'ptft[bench]'), "
            "or pass --no-hf to run paths 1-2 only",
            file=sys.stderr,
        )
        return 2
    report(args, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
