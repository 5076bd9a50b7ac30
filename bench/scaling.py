"""Data-parallel scaling on CPU and the Trainer's overhead: samples/s of ptft's causal LM and
SimCLR.

Two measurements, each model at small sizes on random data (nothing is read or downloaded):

1. **Scaling.** Samples/s of a ``Trainer.fit`` at 1 process with 1 thread (the per-process
   baseline), 1 process with 2 threads (what one process gets out of both cores) and 2 DDP
   processes (``strategy="ddp"``, gloo) with 1 thread each, every run in a fresh Python process.
   Samples/s is what ptft's throughput callback (``ptft.callbacks.throughput``) reports for the
   fit after its first batch, summed over processes (each has the same per-process batch).
   Scaling efficiency = samples/s at 2 processes ÷ (2 × samples/s at 1 process, 1 thread):
   1.0 is perfect, less is the gradient all-reduce and the synchronisation of two processes.
2. **Overhead.** In one 1-thread process, ``Trainer.fit`` (with ptft's throughput callback) and
   a hand-written loop (the model's own loss, ``backward``, the experiment's gradient clipping,
   the optimizer step, ``zero_grad``) on the same model class and init, interleaved step by
   step as in ``bench/lm_throughput.py``: after each Trainer step a callback runs one hand step
   on the same batch. Ratio = hand step time ÷ Trainer step time (medians): 1.0 means the
   framework costs nothing.

The machine these figures come from has 2 cores shared with other people's jobs. Each run
prints the 1-minute load before it (this bench's previous run included) and the matmul peak
its throughput callback measured at its start (1024³ fp32); a run whose peak per thread is
under 80% of the best is marked busy: other jobs had the cores.

    python bench/scaling.py              # both models, ~2-3 minutes on 2 cores
    python bench/scaling.py --quick      # fewer steps: a smoke run
    python bench/scaling.py --models causal_lm --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

MODELS = ("causal_lm", "simclr")
#: (processes, threads per process) of the scaling runs, in the order they run in a round
LAYOUTS = ((1, 1), (2, 1), (1, 2))
#: the experiment each model's config comes from, and the bench's smaller sizes
OVERRIDES = {
    "causal_lm": [
        "experiment=pydoc_gpt",
        "data.block_size=64",
        "data.vocab_size=2048",
        "model.backbone.dim=128",
        "model.backbone.num_layers=2",
        "model.backbone.num_heads=4",
        "model.backbone.max_positions=64",
        "model.backbone.dropout=0.0",
    ],
    "simclr": ["experiment=digits_simclr", "model.knn=null"],
}
BATCH = {"causal_lm": 16, "simclr": 128}
RESULT = "SCALING_RESULT "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: causal_lm, simclr")
    p.add_argument(
        "--steps",
        type=int,
        default=30,
        help="training steps of each scaling run (the first is untimed)",
    )
    p.add_argument(
        "--overhead-steps",
        type=int,
        default=20,
        help="timed rounds of the Trainer-vs-loop comparison",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat the scaling runs; the best of each counts"
    )
    p.add_argument("--parts", default="scaling,overhead", help="comma-separated: scaling, overhead")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    # a worker: one measurement in this process, printed as one JSON line
    p.add_argument("--worker", choices=("fit", "overhead"), help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.overhead_steps = 8, 5
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {list(MODELS)}")
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not args.parts or set(args.parts) - {"scaling", "overhead"}:
        p.error(f"--parts {args.parts}: choose from scaling, overhead")
    if args.steps < 3 or args.overhead_steps < 1 or args.rounds < 1:
        p.error("--steps must be >= 3, --overhead-steps and --rounds >= 1")
    return args


# --------------------------------------------------------------------------------- worker side
def compose(model: str) -> Any:
    """The experiment's config with the bench's sizes (its model, optimizer and clipping)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ptft import config
    from ptft.cli import config_dir

    config.register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=OVERRIDES[model])


def batches(model: str, cfg: Any, count: int) -> Any:
    """``count`` random batches as the model's datamodule would serve them, in a DataLoader."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    n = BATCH[model] * count
    if model == "causal_lm":
        data = torch.randint(
            0, cfg.data.vocab_size, (n, cfg.data.block_size + 1), generator=generator
        )
        return DataLoader(data, batch_size=BATCH[model], shuffle=False, drop_last=True)
    images = torch.rand(n, *cfg.data.input_shape, generator=generator)
    return DataLoader(TensorDataset(images), batch_size=BATCH[model], shuffle=False, drop_last=True)


def trainer(cfg: Any, processes: int, steps: int, callbacks: list[Any]) -> Any:
    """A plain Lightning Trainer with the experiment's clipping: no logger, checkpoints or
    validation."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    from ptft.callbacks.process_group import ProcessGroupCleanup

    strategy = DDPStrategy(process_group_backend="gloo") if processes > 1 else "auto"
    return L.Trainer(
        accelerator="cpu",
        devices=processes,
        strategy=strategy,
        max_steps=steps,
        max_epochs=-1,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, ProcessGroupCleanup()],
    )


def build(model: str) -> tuple[Any, Any]:
    import torch

    from ptft.runs.build import build_model, plain

    cfg = compose(model)
    torch.manual_seed(0)
    return cfg, build_model(plain(cfg.model))


def fit_worker(args: argparse.Namespace) -> dict[str, Any] | None:
    """One scaling run: samples/s from the throughput callback (rank 0 reports)."""
    from ptft.callbacks.throughput import TrainingThroughput

    cfg, module = build(args.model)
    callback = TrainingThroughput()
    fit = trainer(cfg, args.processes, args.steps, [callback])
    fit.fit(module, batches(args.model, cfg, args.steps * args.processes))
    if not fit.is_global_zero:
        return None
    return {**callback.summary, "peak": callback.peak.flops if callback.peak else None}


def hand_step(model: str, module: Any, optimizer: Any, clip: float | None, batch: Any) -> None:
    """What one writes by hand: the model's loss, backward, clipping, optimizer step, zero_grad."""
    import torch

    from ptft.objectives.losses import nt_xent, token_loss

    if model == "causal_lm":
        loss = token_loss(*module.logits_and_labels(batch, "train"))
    else:
        _, z1, z2 = module.views(batch[0])
        loss = nt_xent(z1, z2, module.temperature)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def overhead_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer steps and hand-loop steps of the same model, interleaved in one process; the
    Trainer has ptft's throughput callback, as every ptft run does."""
    import lightning as L
    import torch

    from ptft.callbacks.throughput import TrainingThroughput
    from ptft.modules.backbone_module import instantiate_partial

    cfg, module = build(args.model)
    torch.manual_seed(0)
    _, hand = build(args.model)  # the same class and init, trained by hand
    hand.train()
    optimizer = instantiate_partial(cfg.model.optimizer, hand.trainable_parameters())
    clip = cfg.trainer.get("gradient_clip_val")
    warmup = 2
    times: dict[str, list[float]] = {"trainer": [], "hand": []}

    class Interleave(L.Callback):
        start: float | None = None

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            end = time.perf_counter()
            if batch_idx >= warmup and self.start is not None:
                times["trainer"].append(end - self.start)
            start = time.perf_counter()
            hand_step(args.model, hand, optimizer, clip, batch)
            if batch_idx >= warmup:
                times["hand"].append(time.perf_counter() - start)
            self.start = time.perf_counter()  # the next Trainer step starts here

    rounds = warmup + args.overhead_steps
    fit = trainer(cfg, 1, rounds, [TrainingThroughput(), Interleave()])
    fit.fit(module, batches(args.model, cfg, rounds))
    return times


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = fit_worker(args) if args.worker == "fit" else overhead_worker(args)
    if result is not None:
        print(RESULT + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------- parent side
def run_worker(
    kind: str, model: str, processes: int, threads: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One measurement in a fresh process (its ranks inherit the thread settings)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONWARNINGS": "ignore",
    }
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        kind,
        "--model",
        model,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--steps",
        str(args.steps),
        "--overhead-steps",
        str(args.overhead_steps),
    ]
    load = os.getloadavg()[0]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {model} {processes}x{threads} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1][len(RESULT) :]), "load": load}


def report_scaling(
    args: argparse.Namespace, runs: dict[tuple[str, int, int], list[dict[str, Any]]]
) -> None:
    # a matmul's FLOP/s per thread is the machine's state: under 80% of the run's best, others
    # took the cores
    per_thread = {
        id(r): (r.get("peak") or 0) / threads for (_, _, threads), rs in runs.items() for r in rs
    }
    best = max(per_thread.values(), default=0)
    print(
        f"\n{'model':<11}{'processes':>10}{'threads':>8}{'samples/s':>11}{'per proc':>10}{'MFU':>7}"
        f"{'load':>6}{'peak GFLOP/s':>14}  note"
    )
    for (model, processes, threads), rs in runs.items():
        for r in rs:
            busy = per_thread[id(r)] < 0.8 * best
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
            print(
                f"{model:<11}{processes:>10}{threads:>8}{r['samples_per_sec']:>11.1f}"
                f"{r['samples_per_sec'] / processes:>10.1f}{mfu:>7}{r['load']:>6.2f}"
                f"{(r.get('peak') or 0) / 1e9:>14.1f}  {'busy' if busy else ''}"
            )
    print()
    for model in args.models:
        best = {
            layout: max(r["samples_per_sec"] for r in runs[(model, *layout)]) for layout in LAYOUTS
        }
        one, two, threads = best[(1, 1)], best[(2, 1)], best[(1, 2)]
        print(
            f"{model}: scaling efficiency 2 processes / (2 x 1 process) = {two / (2 * one):.2f} "
            f"(2 threads in 1 process: {threads / (2 * one):.2f}; "
            f"2 processes / 2 threads: {two / threads:.2f})"
        )


def report_overhead(model: str, times: dict[str, list[float]]) -> None:
    trainer, hand = statistics.median(times["trainer"]), statistics.median(times["hand"])
    paired = statistics.median(h / t for h, t in zip(times["hand"], times["trainer"], strict=True))
    spread = max(
        (max(t) - min(t)) / statistics.median(t) for t in (times["trainer"], times["hand"])
    )
    print(
        f"{model}: Trainer {trainer * 1e3:.1f} ms/step, "
        f"hand loop {hand * 1e3:.1f} ms/step (medians of "
        f"{len(times['hand'])}): hand/Trainer = {hand / trainer:.3f}, paired {paired:.3f}"
        + (f"; noisy: step times spread {spread:.0%}" if spread > 0.25 else "")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    print(
        f"{os.cpu_count()} cores; 1-minute load {os.getloadavg()[0]:.2f} at the start; "
        f"{args.steps} steps a scaling run, {args.rounds} round(s)",
        flush=True,
    )
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds if "scaling" in args.parts else 0):
        for model in args.models:
            for processes, threads in LAYOUTS:
                result = run_worker("fit", model, processes, threads, args)
                runs.setdefault((model, processes, threads), []).append(result)
                print(
                    f"  {model} {processes} process(es) x {threads} thread(s): "
                    f"{result['samples_per_sec']:.1f} samples/s",
                    file=sys.stderr,
                    flush=True,
                )
    if runs:
        report_scaling(args, runs)
    if "overhead" not in args.parts:
        return 0
    print(
        f"\nTrainer vs hand-written loop, 1 process, 1 thread, "
        f"{args.overhead_steps} interleaved rounds:"
    )
    for model in args.models:
        report_overhead(model, run_worker("overhead", model, 1, 1, args))
    print(
        f"\n1-minute load {os.getloadavg()[0]:.2f} at the end (this bench's own processes included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
