"""Warmup + cosine: the learning rate at chosen steps against the formula written out."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.schedules import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.4)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, min_factor=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # linear warmup over 10 steps: 0.04, 0.08, …, 0.4
    assert lrs[:10] == pytest.approx([0.4 * (i + 1) / 10 for i in range(10)])
    for step in (10, 40, 70, 99):
        progress = (step - 10) / 90
        expected = 0.4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lrs[step] == pytest.approx(expected)
    assert sched.state_dict()["lr_lambdas"][0] == {"warmup_steps": 10, "total_steps": 100, "min_factor": 0.1}
