"""GlobalBatchNorm on 2 gloo processes against one BatchNorm over the whole batch."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ptft.nn.global_batchnorm import GlobalBatchNorm, GlobalBatchNormSync

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, x: torch.Tensor, weight: torch.Tensor, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = GlobalBatchNormSync().apply(nn.Sequential(nn.BatchNorm2d(3, momentum=0.3)))
        assert isinstance(model[0], GlobalBatchNorm)
        share = x.chunk(WORLD)[rank].clone().requires_grad_(True)
        y = model(share)
        # each process's loss weighs its outputs differently; parameter gradients are then
        # averaged over processes, as DDP does
        (y * weight.chunk(WORLD)[rank]).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
            g /= WORLD
        reverted = GlobalBatchNormSync().revert(model)
        torch.save(
            {
                "y": y.detach(),
                "dx": share.grad,
                "grads": grads,
                "state": reverted.state_dict(),
                "reverted": type(reverted[0]).__name__,
            },
            out_dir / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_on_two_processes_is_one_batchnorm_over_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5) * 3 + 1
    weight = torch.randn(6, 3, 4, 5)
    mp.spawn(_worker, args=(_free_port(), x, weight, tmp_path), nprocs=WORLD, join=True)
    records = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # DDP trains the mean of the processes' losses; the input gradients that reach each process
    # through the shared statistics are those of their sum (as with torch's SyncBatchNorm)
    reference = nn.BatchNorm2d(3, momentum=0.3)
    whole = x.clone().requires_grad_(True)
    y = reference(whole)
    (y * weight).sum().backward()

    torch.testing.assert_close(
        torch.cat([r["y"] for r in records]), y.detach(), rtol=1e-5, atol=1e-6
    )
    # the input gradient flows through the shared statistics: each process's share of the whole
    torch.testing.assert_close(
        torch.cat([r["dx"] for r in records]), whole.grad, rtol=1e-5, atol=1e-6
    )
    for record in records:
        for got, param in zip(record["grads"], reference.parameters(), strict=True):
            torch.testing.assert_close(got, param.grad / WORLD, rtol=1e-5, atol=1e-6)
        # running statistics follow the whole batch (unbiased variance), and convert back
        assert record["reverted"] == "BatchNorm2d"
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(record["state"][f"0.{key}"], value)


def test_global_batchnorm_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    local = nn.BatchNorm1d(4)
    converted = GlobalBatchNormSync().apply(nn.Sequential(nn.BatchNorm1d(4)))
    x = torch.randn(8, 4)
    torch.testing.assert_close(converted(x), local(x))
    assert list(converted.state_dict()) == [f"0.{k}" for k in local.state_dict()]
