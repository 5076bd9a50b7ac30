"""FLOPs accounting, the peak table and the throughput callback (samples/s, tokens/s, MFU)."""

from __future__ import annotations

import csv
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import measure_flops
from torch.utils.data import DataLoader

from ptft.callbacks import throughput as throughput_module
from ptft.callbacks.throughput import TrainingThroughput
from ptft.monitors import flops
from ptft.objectives.causal_lm import CausalLM
from ptft.objectives.masked_lm import MaskedLM
from ptft.runs import build as run
from ptft.runs import fit
from ptft.runs.fit import train
from ptft.tasks.classifier import Classifier
from ptft.tasks.sequence_classifier import SequenceClassifier
from ptft.tasks.sequence_generator import SequenceGenerator
from tests.helpers import QUIET, compose_train

V, D, LAYERS, HEADS, T, B = 512, 64, 2, 4, 32, 4
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}


def transformer(causal: bool = True) -> dict:
    return {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": V,
        "dim": D,
        "num_layers": LAYERS,
        "num_heads": HEADS,
        "max_positions": 64,
        "positions": "learned",
        "dropout": 0.0,
        "causal": causal,
    }


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan's N counted from the parameters themselves: all but the token and position
    embeddings (the tied head is the token embedding, listed once)."""
    return sum(p.numel() for name, p in model.named_parameters() if "embedding" not in name)


def per_token(model: torch.nn.Module, seq_len: int) -> int:
    """6N + 12·L·H·Q·T (H·Q = d) + 6·d·V for the tied head."""
    return 6 * non_embedding_params(model) + 12 * LAYERS * D * seq_len + 6 * D * V


def blocks(batch_size: int = B, seq_len: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        1, V, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(seed)
    )


# ----------------------------------------------------------------------- FLOPs of a batch
@pytest.mark.parametrize("cls", [CausalLM, MaskedLM])
def test_language_model_flops_equal_the_formula(cls):
    model = cls(transformer(causal=cls is CausalLM), [T], ADAMW)
    batch = blocks()
    expected = B * T * per_token(model, T)
    assert model.training_flops(batch) == expected
    assert flops.training_flops(model, batch) == expected  # the analytic count wins over measuring
    assert model.training_tokens(batch) == B * T


def test_sequence_task_flops_equal_the_formula():
    tokens, labels = blocks()[:, :-1], blocks(seed=1)[:, 1:]
    generator = SequenceGenerator(transformer(), [T], ADAMW)
    assert generator.training_flops((tokens, labels)) == B * T * per_token(generator, T)
    classifier = SequenceClassifier(transformer(causal=False), [T], 5, ADAMW)
    n = sum(
        p.numel() for name, p in classifier.backbone.named_parameters() if "embedding" not in name
    )
    # no tied head: the backbone per token, and a (d × 5) linear head per sequence
    expected = B * T * (6 * n + 12 * LAYERS * D * T) + B * 6 * D * 5
    assert classifier.training_flops((tokens, labels)) == expected
    probe = SequenceClassifier(transformer(causal=False), [T], 5, ADAMW, finetune="linear_probe")
    assert probe.training_flops((tokens, labels)) is None  # a frozen backbone is measured instead


def test_transformer_lm_flops_agree_with_lightning_measure_flops():
    # an independent measurement: the same model built on the meta device, forward, then
    # backward of a plain cross-entropy, counted by Lightning's measure_flops
    with torch.device("meta"):
        meta_model = CausalLM(transformer(), [T], ADAMW)
        batch = torch.randint(1, V, (B, T + 1))
    counted = measure_flops(
        meta_model,
        lambda: meta_model(batch[:, :-1]),
        lambda logits: F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()),
    )
    model = CausalLM(transformer(), [T], ADAMW)
    analytic = model.training_flops(blocks())
    assert abs(counted - analytic) / analytic < 0.10
    # ptft's own measured path (a meta copy of the live model, its real training_step) agrees too
    before = [p.detach().clone() for p in model.parameters()]
    assert abs(flops.measured_training_flops(model, blocks()) - analytic) / analytic < 0.10
    assert all(
        torch.equal(a, p) and p.grad is None
        for a, p in zip(before, model.parameters(), strict=True)
    )


@pytest.mark.parametrize("finetune", ["full", "linear_probe"])
def test_measured_flops_of_an_mlp_classifier_count_every_matmul(finetune):
    mlp = {"_target_": "ptft.nn.mlp.MLP", "hidden_dims": [32, 16]}
    model = Classifier(mlp, [1, 8, 8], 10, ADAMW, finetune=finetune)
    batch = (torch.rand(B, 1, 8, 8), torch.randint(0, 10, (B,)))
    backbone, head = [(64, 32), (32, 16)], (16, 10)  # flattened 8×8 pixels → 32 → 16 → 10 classes
    # forward 2·B·in·out per layer; backward 2·B·in·out for each weight gradient, and as much
    # again for each input gradient that a trainable parameter below needs (none for the pixels)
    if finetune == "full":
        per_example = 4 * 64 * 32 + 6 * 32 * 16 + 6 * head[0] * head[1]
    else:  # the frozen backbone only runs forward, and the head needs no gradient of its input
        per_example = sum(2 * i * o for i, o in backbone) + 4 * head[0] * head[1]
    assert model.training_flops(batch) is None
    assert flops.training_flops(model, batch) == B * per_example


# ---------------------------------------------------------------------------- peak FLOP/s
TERA = 1e12
#: NVIDIA datasheets; tensor-core figures there are "with sparsity", dense is half of them
DATASHEETS = [
    # H100 SXM: FP32 67 TF, TF32 989 TF*, BF16/FP16 1,979 TF* (Lightning's table)
    (
        "NVIDIA H100 80GB HBM3",
        {"fp32": 67, "tf32": 989.4 / 2, "bf16": 1978.9 / 2, "fp16": 1978.9 / 2},
    ),
    # H100 PCIe: FP32 51 TF, TF32 756 TF*, BF16/FP16 1,513 TF* (Lightning's table)
    ("NVIDIA H100 PCIe", {"fp32": 51, "tf32": 756 / 2, "bf16": 1513 / 2, "fp16": 1513 / 2}),
    # H100 NVL (one card): FP32 60 TF, TF32 835 TF*, BF16/FP16 1,671 TF*
    ("NVIDIA H100 NVL", {"fp32": 60, "tf32": 835 / 2, "bf16": 1671 / 2, "fp16": 1671 / 2}),
    # H200 SXM: FP32 67 TF, TF32 989 TF*, BF16/FP16 1,979 TF*
    ("NVIDIA H200", {"fp32": 67, "tf32": 989 / 2, "bf16": 1979 / 2, "fp16": 1979 / 2}),
    # H200 NVL: FP32 60 TF, TF32 835 TF*, BF16/FP16 1,671 TF*
    ("NVIDIA H200 NVL", {"fp32": 60, "tf32": 835 / 2, "bf16": 1671 / 2, "fp16": 1671 / 2}),
    # A100 (SXM4 and PCIe alike): FP32 19.5 TF, TF32 312 TF*, BF16/FP16 624 TF*
    ("NVIDIA A100-SXM4-80GB", {"fp32": 19.5, "tf32": 312 / 2, "bf16": 624 / 2, "fp16": 624 / 2}),
    ("NVIDIA A100 80GB PCIe", {"fp32": 19.5, "tf32": 312 / 2, "bf16": 624 / 2, "fp16": 624 / 2}),
    # L40S: FP32 91.6 TF, BF16 362.05 TF dense (a datasheet that gives both; Lightning's name
    # matching would take it for the L4, 121 TF)
    ("NVIDIA L40S", {"fp32": 91.6, "bf16": 362.05}),
]
DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@pytest.mark.parametrize(("name", "figures"), DATASHEETS, ids=[n for n, _ in DATASHEETS])
def test_peak_table_gives_the_datasheet_figures_for_the_device_names(monkeypatch, name, figures):
    # the strings torch.cuda.get_device_name() returns on these GPUs (compute capability 8.0+)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    previous = torch.get_float32_matmul_precision()
    try:
        for key, tflops in figures.items():
            torch.set_float32_matmul_precision("high" if key == "tf32" else "highest")
            peak = flops.peak_flops(torch.device("cuda", 0), DTYPES[key])
            assert peak.flops == pytest.approx(tflops * TERA, rel=0.01), (name, key, peak)
            assert "datasheet" in peak.source
    finally:
        torch.set_float32_matmul_precision(previous)


def test_unknown_gpus_and_precisions_have_no_datasheet_figure(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Imaginary 9000")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert (
        flops.datasheet_peak(torch.device("cuda", 0), torch.bfloat16) is None
    )  # → measured instead
    assert flops.datasheet_peak(torch.device("cpu"), torch.float32) is None
    assert flops.table_peak("NVIDIA H200", "fp64") is None
    assert [
        flops.compute_dtype(p)
        for p in ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
    ] == [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.float64]


def test_measured_peak_is_timed_once_and_cached():
    first = flops.measured_peak("cpu", torch.float32, size=128, repeats=2)
    hits = flops._measured_peak.cache_info().hits
    assert flops.measured_peak("cpu", torch.float32, size=128, repeats=2) == first
    assert flops._measured_peak.cache_info().hits == hits + 1  # no second timing
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    # 2·n³ / the time of one product: of the order of the cached best (noise aside)
    assert 0 < max(flops.matmul_flops(a, b) for _ in range(3)) < 20 * first


# ------------------------------------------------------------------------------ callback
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((step, dict(metrics)))


def test_callback_sums_processes_and_leaves_validation_out(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(throughput_module.time, "perf_counter", clock)
    monkeypatch.setattr(
        throughput_module, "peak_flops", lambda device, dtype: flops.Peak(1e9, "test")
    )
    logger = RecordingLogger()
    trainer = SimpleNamespace(
        fast_dev_run=False,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="32-true",
        log_every_n_steps=2,
        accumulate_grad_batches=1,
        world_size=2,
        is_global_zero=True,
        loggers=[logger],
        global_step=0,
    )
    module = SimpleNamespace(
        training_flops=lambda batch: 3e8, training_tokens=lambda batch: batch.numel()
    )
    callback = TrainingThroughput(window_size=3)
    callback.setup(trainer, module, "fit")
    batch = torch.zeros(8, 16, dtype=torch.long)  # 8 sequences of 16 tokens on each of 2 processes

    def step(seconds: float) -> None:
        callback.on_train_batch_start(trainer, module, batch, 0)
        clock.now += seconds
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, module, None, batch, 0)

    for _ in range(4):
        step(0.5)
    callback.on_validation_start(trainer, module)
    clock.now += 100.0  # a long validation: not training time
    for _ in range(2):
        step(0.5)
    callback.on_train_end(trainer, module)

    # every 2 steps once the window of 3 batches is full (Lightning's step label: steps before);
    # the window spans 2 batches of 0.5 s, validation or not:
    # 8 samples / 0.5 s on each of 2 processes
    assert [s for s, _ in logger.rows] == [3, 5]
    for _, row in logger.rows:
        assert row["train/samples_per_sec"] == pytest.approx(2 * 8 / 0.5)
        assert row["train/tokens_per_sec"] == pytest.approx(2 * 8 * 16 / 0.5)
        assert row["train/mfu"] == pytest.approx(
            3e8 / 0.5 / 1e9
        )  # one process's FLOP/s over its peak
    summary = callback.summary  # the 5 batches after the first, in 2.5 s of training
    assert summary["samples_per_sec"] == pytest.approx(2 * 8 * 5 / 2.5)
    assert summary["seconds"] == pytest.approx(2.5) and summary["mfu"] == pytest.approx(0.6)


class BatchTimes(L.Callback):
    """The test's own clock: when each training batch ended."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def test_a_short_fit_logs_rates_the_batches_agree_with(tmp_path, monkeypatch):
    steps, batch_size = 8, 64
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            f"trainer.max_steps={steps}",
            "trainer.log_every_n_steps=4",
            f"data.batch_size={batch_size}",
            "trainer.limit_val_batches=1",
            "trainer.val_check_interval=4",
            "logger=csv",
            "test=false",
            "callbacks.embedding_projector=null",
            *QUIET,
        ],
        tmp_path,
    )
    timer = BatchTimes()
    callbacks: list[TrainingThroughput] = []
    build_trainer = run.build_trainer

    def with_timer(cfg, extra=()):  # the test's clock runs after the callback; keep hold of it
        trainer = build_trainer(cfg, [*extra, timer])
        callbacks.extend(c for c in trainer.callbacks if isinstance(c, TrainingThroughput))
        return trainer

    monkeypatch.setattr(fit, "build_trainer", with_timer)
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = [
        (int(r["step"]), float(r["train/samples_per_sec"]), float(r["train/mfu"]))
        for r in rows
        if r.get("train/samples_per_sec")
    ]
    assert [s for s, _, _ in logged] == [3, 7]
    ends = timer.ends
    # the callback's window (4 batches) is the test clock's last 3 batch intervals, with the
    # validation after step 4 left out of the clock, so compare the last log's window
    expected = batch_size * 3 / (ends[7] - ends[4])
    assert logged[-1][1] == pytest.approx(expected, rel=0.10)
    assert all(0 < mfu < 1.5 for _, _, mfu in logged)
    (callback,) = callbacks
    assert 0 < callback.summary["mfu"] < 1.5
    assert callback.summary["batches"] == steps - 1


def test_lm_fit_without_logger_reports_tokens_and_mfu():
    model = CausalLM(transformer(), [T], ADAMW)
    callback = TrainingThroughput(window_size=2)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(blocks(B * 4, T), batch_size=B))
    summary = callback.summary
    assert summary["tokens_per_sec"] == pytest.approx(summary["samples_per_sec"] * T)
    assert summary["flops_per_batch"] == B * T * per_token(model, T)
    assert 0 < summary["mfu"] < 1.5


def test_counting_the_flops_of_simclr_leaves_its_training_unchanged(tmp_path):
    # SimCLR's FLOPs are measured on a copy, whose step draws augmentation parameters from the
    # same random generator as the run: the run must train exactly as without the callback
    weights = []
    for name, extra in (("with", []), ("without", ["callbacks.throughput=null"])):
        cfg = compose_train(
            [
                "experiment=digits_simclr",
                "trainer.max_steps=3",
                "trainer.max_epochs=null",
                "logger=csv",
                "trainer.log_every_n_steps=1",
                "test=false",
                "model.knn=null",
                "callbacks.embedding_projector=null",
                *extra,
                *QUIET,
            ],
            tmp_path / name,
        )
        train(cfg)
        # no validation ran: Lightning's own last.ckpt at the end, and no second copy of it
        assert [p.name for p in (tmp_path / name / "checkpoints").iterdir()] == ["last.ckpt"]
        weights.append(
            torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)[
                "state_dict"
            ]
        )
    rows = list(csv.DictReader((tmp_path / "with" / "csv" / "metrics.csv").open()))
    assert any(row.get("train/mfu") for row in rows)  # the FLOPs were counted
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[0][key], value, rtol=0, atol=0)
