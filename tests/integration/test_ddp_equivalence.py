"""DDP on 2 CPU processes (gloo, ``ddp_spawn``) computes what one process computes with the
doubled batch.

Each test runs one real Lightning training step on 2 processes, a callback writing what each
rank saw (its batch, its loss, the DDP-averaged gradients, the parameters after the step) to
``tmp_path``; the single-process reference is then computed here, with a plain loss written in
this file on the whole 2N batch, so a wrong self-mask offset, a gather without gradients or a
loss scaled by the world size shows up as a mismatch.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ptft.callbacks.process_group import ProcessGroupCleanup
from ptft.nn.global_batchnorm import GlobalBatchNormSync
from ptft.objectives.causal_lm import CausalLM
from ptft.objectives.simclr import SimCLR

WORLD = 2
#: examples (SimCLR) or blocks (causal LM) per process
N = 8
LR = 0.5


class TwoViews(nn.Module):
    """Stands in for the random augmentation: two fixed, different views of a batch, in turn.

    ``SimCLR.views`` asks for one view, then the other; with random views the two settings
    could never see the same pixels, with these they do, and the reference can redraw them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @staticmethod
    def view(x: Tensor, which: int) -> Tensor:
        """View 0 mirrors the image; view 1 shifts and dims it."""
        return x.flip(-1) if which == 0 else 0.7 * x.roll(1, dims=-2) + 0.1

    def forward(self, x: Tensor) -> Tensor:
        out = self.view(x, self.calls % 2)
        self.calls += 1
        return out


class Capture(L.Callback):
    """Writes ``rank<r>.pt`` with this rank's batch, loss, gradients (after DDP's all-reduce,
    before the step) and parameters (after the step)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_num_threads(1)  # in each worker: 2 processes share 2 busy cores

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.record["batch"] = (
            batch[0].clone() if isinstance(batch, (list, tuple)) else batch.clone()
        )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        self.record["grads"] = {
            name: p.grad.detach().clone()
            for name, p in pl_module.named_parameters()
            if p.grad is not None
        }

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.record["loss"] = outputs["loss"].detach().clone()
        self.record["params"] = {
            name: p.detach().clone() for name, p in pl_module.named_parameters()
        }
        self.record["world_size"] = trainer.world_size
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


def fit_one_ddp_step(model: L.LightningModule, dataset: Any, out_dir: Path) -> list[dict[str, Any]]:
    """One training step of ``model`` on 2 gloo processes, ``N`` examples each; the records of
    both ranks.

    BatchNorm layers normalise over both processes' examples, as ``trainer=ddp_cpu`` has them
    (``sync_batchnorm: true``, which ptft runs on CPU with :class:`GlobalBatchNormSync`)."""
    trainer = L.Trainer(
        plugins=[GlobalBatchNormSync()],
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp_spawn",
        max_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
        # the cleanup closes each worker's gloo group before it exits, as every ptft run does
        callbacks=[Capture(out_dir), ProcessGroupCleanup()],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        # Lightning puts a DistributedSampler (no shuffling) in: rank r gets examples r, r+2, …
        trainer.fit(model, train_dataloaders=DataLoader(dataset, batch_size=N, shuffle=False))
    records = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(rec["world_size"] == WORLD for rec in records)
    return records


def same_rows(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same examples (first dimension), in any order."""
    return sorted(map(tuple, a.flatten(1).tolist())) == sorted(map(tuple, b.flatten(1).tolist()))


def assert_close_tensors(actual: dict[str, Tensor], expected: dict[str, Tensor], what: str) -> None:
    """Every tensor of ``expected`` matches ``actual`` to fp32 precision, relative to its own scale.

    A tensor whose reference is below a millionth of the largest one is zero up to rounding
    (the bias of a layer right before BatchNorm: BN subtracts the batch mean, so its exact
    gradient is 0): both sides must then be that small, and their noise is not compared.
    """
    assert actual.keys() == expected.keys(), f"{what}: {sorted(actual.keys() ^ expected.keys())}"
    floor = 1e-6 * max(ref.abs().max().item() for ref in expected.values())
    worst = 0.0
    for name, ref in expected.items():
        scale = ref.abs().max().item()
        if scale < floor:
            assert actual[name].abs().max().item() < floor, (
                f"{what} {name} should be 0 up to rounding"
            )
            continue
        label = f"{what} {name}"
        torch.testing.assert_close(
            actual[name],
            ref,
            rtol=1e-5,
            atol=1e-6 * scale,
            msg=lambda m, label=label: f"{label}: {m}",
        )
        worst = max(worst, ((actual[name] - ref).abs().max() / scale).item())
    print(f"{what}: max |difference| / max |reference| = {worst:.2e} over {len(expected)} tensors")


def assert_sgd_step(
    after: dict[str, Tensor], before: dict[str, Tensor], grads: dict[str, Tensor], what: str
) -> None:
    """``after = before - LR * grads`` (plain SGD), up to an ulp of the parameter and the
    gradients' own tolerance (an update of 1e-5 to a LayerNorm weight of 1 is only about 80
    of its ulps, so a relative tolerance on the update alone would fail on rounding)."""
    assert after.keys() == before.keys()
    worst = 0.0
    for name, p in before.items():
        step = LR * grads[name]
        error = (after[name] - (p - step)).abs()
        allowed = torch.finfo(torch.float32).eps * p.abs() + 2e-5 * step.abs().max()
        assert (error <= allowed).all(), f"{what} {name}: off by {error.max().item():.3g}"
        worst = max(worst, (error / step.abs().max()).max().item())
    print(
        f"{what}: max |difference| / max |LR * gradient| = {worst:.2e} over {len(before)} tensors"
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread per process: 2 workers on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- SimCLR ------------------------------------------------------------------------------------


def naive_nt_xent_terms(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent of each of the 2M anchors (Chen et al. 2020, eq. 1), one anchor at a time:
    ``-log exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ)`` with cosine similarities ``s``; anchors
    ``0..M-1`` are the first views, ``M..2M-1`` the second."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    m = z1.shape[0]
    terms = []
    for i in range(2 * m):
        positive = (i + m) % (2 * m)
        others = [k for k in range(2 * m) if k != i]
        sims = z[others] @ z[i] / temperature
        terms.append(torch.logsumexp(sims, dim=0) - z[positive] @ z[i] / temperature)
    return torch.stack(terms)


def test_simclr_on_two_processes_matches_one_process_with_the_doubled_batch(tmp_path):
    torch.manual_seed(0)
    temperature = 0.5
    model = SimCLR(
        backbone={"_target_": "ptft.nn.mlp.MLP", "hidden_dims": [32], "dropout": 0.0},
        input_shape=(1, 8, 8),
        optimizer={"_target_": "torch.optim.SGD", "lr": LR},
        temperature=temperature,
        projection_hidden_dim=32,
        projection_dim=16,
        knn=None,
        online_probe=None,
    )
    model.augment = TwoViews()
    reference = copy.deepcopy(
        model
    )  # fit on ddp_spawn loads rank 0's trained weights back into `model`
    images = torch.rand(WORLD * N, 1, 8, 8)

    records = fit_one_ddp_step(model, TensorDataset(images), tmp_path)

    # the gathered batch is rank 0's examples, then rank 1's: the reference orders them alike
    parts = [rec["batch"] for rec in records]
    assert all(part.shape[0] == N for part in parts)
    assert same_rows(torch.cat(parts), images), "the ranks did not share the batch out"

    # reference: one process, all 2N examples, every example a negative of every other (the
    # projection head's BatchNorm too normalises over all 2N, as the global BN does under DDP)
    reference.train()
    everything = torch.cat(parts)
    z1 = reference(TwoViews.view(everything, 0))
    z2 = reference(TwoViews.view(everything, 1))
    terms = naive_nt_xent_terms(z1, z2, temperature)
    loss = terms.mean()
    loss.backward()
    expected_grads = {name: p.grad for name, p in reference.named_parameters()}

    # each rank's loss is its share (the mean over its own 2N anchors of the global problem),
    # and the mean of the shares is the global loss: not a world-size multiple of it
    m = WORLD * N
    for rank, rec in enumerate(records):
        own = torch.cat(
            [torch.arange(rank * N, (rank + 1) * N), m + torch.arange(rank * N, (rank + 1) * N)]
        )
        torch.testing.assert_close(rec["loss"], terms[own].mean().detach(), rtol=1e-5, atol=0)
    mean_of_ranks = torch.stack([rec["loss"] for rec in records]).mean()
    torch.testing.assert_close(mean_of_ranks, loss.detach(), rtol=1e-5, atol=0)
    print(
        f"loss {loss.item():.6f}: mean of the ranks' losses off by "
        f"{abs(mean_of_ranks.item() / loss.item() - 1):.1e}"
    )

    # DDP-averaged gradients = gradients of the global loss, on both ranks
    for rank, rec in enumerate(records):
        assert_close_tensors(rec["grads"], expected_grads, f"rank {rank} gradient of")


# -- causal LM ---------------------------------------------------------------------------------


def test_causal_lm_step_on_two_processes_matches_one_process_with_the_doubled_batch(tmp_path):
    torch.manual_seed(0)
    vocab, block = 61, 12
    model = CausalLM(
        backbone={
            "_target_": "ptft.nn.transformer.Transformer",
            "vocab_size": vocab,
            "dim": 32,
            "num_layers": 2,
            "num_heads": 2,
            "dropout": 0.0,
            "max_positions": 32,
            "causal": True,
        },
        input_shape=(block,),
        optimizer={"_target_": "torch.optim.SGD", "lr": LR},
    )
    reference = copy.deepcopy(model)
    # no padding id (0) in the blocks: every token is an ordinary one
    blocks = torch.randint(1, vocab, (WORLD * N, block + 1))

    records = fit_one_ddp_step(model, blocks, tmp_path)
    parts = [rec["batch"] for rec in records]
    assert all(part.shape == (N, block + 1) for part in parts)
    assert same_rows(torch.cat(parts), blocks), "the ranks did not share the blocks out"

    # reference: plain next-token cross-entropy over all 2N blocks, one SGD step by hand
    full = torch.cat(parts)
    reference.train()
    logits = reference(full[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, vocab), full[:, 1:].reshape(-1))
    loss.backward()
    params = dict(reference.named_parameters())
    expected_grads = {name: p.grad for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}

    # every block has the same number of tokens, so the global mean is the mean of the ranks' means
    for rank, rec in enumerate(records):
        own = full[rank * N : (rank + 1) * N]
        own_loss = F.cross_entropy(
            reference(own[:, :-1]).reshape(-1, vocab), own[:, 1:].reshape(-1)
        )
        torch.testing.assert_close(rec["loss"], own_loss.detach(), rtol=1e-5, atol=0)
    mean_of_ranks = torch.stack([rec["loss"] for rec in records]).mean()
    torch.testing.assert_close(mean_of_ranks, loss.detach(), rtol=1e-5, atol=0)
    print(
        f"loss {loss.item():.6f}: mean of the ranks' losses off by "
        f"{abs(mean_of_ranks.item() / loss.item() - 1):.1e}"
    )

    for rank, rec in enumerate(records):
        assert_close_tensors(rec["grads"], expected_grads, f"rank {rank} gradient of")
        assert_sgd_step(rec["params"], before, expected_grads, f"rank {rank} step of")
