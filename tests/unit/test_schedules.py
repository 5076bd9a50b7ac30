"""Schedules: the learning rate at chosen steps against each formula written out."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.schedules import constant, slanted_triangular, warmup_cosine


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
    assert sched.state_dict()["lr_lambdas"][0] == {
        "warmup_steps": 10,
        "total_steps": 100,
        "min_factor": 0.1,
    }


def lrs_over(sched, opt, steps):
    """The first group's rate at each of ``steps + 1`` points: before step 0 … after ``steps``."""
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def stlr(t, T, lr_max, cut_frac=0.1, ratio=32):
    """Howard & Ruder 2018, eq. 3, written out again."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + p * (ratio - 1)) / ratio


def test_slanted_triangular_follows_the_paper():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    T = 100
    lrs = lrs_over(slanted_triangular(opt, total_steps=T), opt, T)
    cut = 10  # floor(100 * 0.1)
    assert (
        lrs[0] == pytest.approx(0.01 / 32) == pytest.approx(stlr(0, T, 0.01))
    )  # step 0: lr_max / ratio
    assert lrs[cut] == pytest.approx(0.01) == pytest.approx(stlr(cut, T, 0.01))  # the cut: lr_max
    assert (
        lrs[T] == pytest.approx(0.01 / 32) == pytest.approx(stlr(T, T, 0.01))
    )  # the end: lr_max / ratio
    for t in range(T + 1):
        assert lrs[t] == pytest.approx(stlr(t, T, 0.01)), t
    # the rise and the fall are both linear
    assert lrs[1] - lrs[0] == pytest.approx(lrs[cut] - lrs[cut - 1])
    assert lrs[cut + 1] - lrs[cut] == pytest.approx(lrs[T] - lrs[T - 1])


def test_slanted_triangular_holds_its_floor_where_the_formula_would_go_below():
    # T·cut_frac = 9.5: the cut is floor(9.5) = 9, and the paper's decay reaches lr_max/ratio
    # at cut/cut_frac = 90 < T, then goes on down (negative by T); the schedule holds the floor
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    lrs = lrs_over(slanted_triangular(opt, total_steps=95), opt, 95)
    assert lrs[9] == pytest.approx(0.01)
    for t in range(91):
        assert lrs[t] == pytest.approx(stlr(t, 95, 0.01)), t
    assert stlr(95, 95, 0.01) < 0
    assert lrs[90:] == pytest.approx([0.01 / 32] * 6)


def test_slanted_triangular_with_other_settings_and_groups():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.1 / 2.6}], lr=0.1)
    sched = slanted_triangular(opt, total_steps=50, cut_frac=0.2, ratio=10)
    for t in range(51):
        for group, lr_max in zip(opt.param_groups, (0.1, 0.1 / 2.6), strict=True):
            assert group["lr"] == pytest.approx(stlr(t, 50, lr_max, cut_frac=0.2, ratio=10))
        opt.step()
        sched.step()
    state = sched.state_dict()["lr_lambdas"][0]
    assert state == {"total_steps": 50, "cut_frac": 0.2, "ratio": 10.0, "cut": 10}  # plain numbers


def test_constant_after_a_linear_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    lrs = lrs_over(constant(opt, total_steps=20, warmup_steps=4), opt, 20)
    assert lrs[:4] == pytest.approx([0.3 * (i + 1) / 4 for i in range(4)])
    assert lrs[4:] == pytest.approx([0.3] * 17)
    opt = torch.optim.SGD([param], lr=0.3)
    assert lrs_over(constant(opt, total_steps=5), opt, 5) == pytest.approx([0.3] * 6)
