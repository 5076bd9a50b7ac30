"""The study's progress as pure functions driven by a made-up clock: the run count (runs kept
from an earlier start included), the elapsed time and the estimate of the time left."""

from __future__ import annotations

import io
import threading
from collections import Counter

import pytest

from ptft.errors import ConfigError
from ptft.study.progress import (
    OverallBar,
    StudyProgress,
    clock_text,
    estimate_left,
    left_text,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_clock_and_time_left_read_as_a_person_says_them():
    assert [clock_text(s) for s in (0, 59.9, 61, 721, 3600, 3723)] == [
        "0:00",
        "0:59",
        "1:01",
        "12:01",
        "1:00:00",
        "1:02:03",
    ]
    assert left_text(None) == "time left unknown"
    assert left_text(40.4) == "~40 s left"
    assert left_text(6 * 60 + 10) == "~6 min left"
    assert left_text(3600 + 5 * 60) == "~1 h 05 min left"


def test_estimate_weights_each_remaining_run_by_the_mean_of_its_kind():
    durations = {("digits", "finetune"): [10.0, 14.0], ("digits", "svc"): [0.5]}
    remaining = Counter({("digits", "finetune"): 3, ("digits", "svc"): 2, ("digits", "scratch"): 1})
    # a finetune run at 12 s, an svc fit at 0.5 s, and a kind not seen yet at the mean of all
    # three finished runs, (10 + 14 + 0.5) / 3
    expected = 3 * 12.0 + 2 * 0.5 + (10.0 + 14.0 + 0.5) / 3
    assert estimate_left(durations, remaining) == pytest.approx(expected)
    assert estimate_left({}, remaining) is None  # nothing finished: nothing to go on
    assert estimate_left(durations, Counter()) == 0.0


def test_a_study_counts_its_runs_and_estimates_from_those_that_finished():
    clock = Clock()
    kinds = [("t", "finetune"), ("t", "svc")] * 3
    progress = StudyProgress(kinds, clock=clock)
    assert (progress.count, progress.total) == ("[0/6]", 6)
    assert progress.timing == "elapsed 0:00, time left unknown"

    clock.now += 30  # pretraining
    clock.now += 20
    progress.finished(("t", "finetune"), 20.0)
    # five runs left, known only through the one finetune run: 5 × 20 s
    assert progress.count == "[1/6]"
    assert progress.left == pytest.approx(100.0)
    assert progress.timing == "elapsed 0:50, ~2 min left"

    clock.now += 1
    progress.finished(("t", "svc"), 1.0)
    # two finetune runs at 20 s and two svc fits at 1 s
    assert progress.left == pytest.approx(2 * 20.0 + 2 * 1.0)
    assert progress.timing == "elapsed 0:51, ~42 s left"

    for kind, seconds in [(("t", "finetune"), 40.0), (("t", "svc"), 1.0)] * 2:
        clock.now += seconds
        progress.finished(kind, seconds)
    assert progress.count == "[6/6]" and progress.left == 0.0
    assert progress.timing == "elapsed 2:13, all runs done"
    with pytest.raises(ConfigError, match="none was left"):
        progress.finished(("t", "svc"), 1.0)


def test_runs_kept_from_an_earlier_start_count_and_inform_the_estimate():
    clock = Clock()
    progress = StudyProgress([("t", "finetune")] * 4, clock=clock)
    # a restart: the first two runs finished before (in 30 s each), at no cost now
    progress.finished(("t", "finetune"), 30.0)
    progress.finished(("t", "finetune"), 30.0)
    assert progress.count == "[2/4]"
    assert progress.elapsed == 0.0 and progress.left == pytest.approx(60.0)
    clock.now += 50
    progress.finished(("t", "finetune"), 50.0)
    assert progress.count == "[3/4]"
    assert progress.left == pytest.approx((30 + 30 + 50) / 3)
    assert progress.timing == "elapsed 0:50, ~37 s left"


def test_the_time_left_counts_down_while_a_run_is_under_way():
    clock = Clock()
    progress = StudyProgress([("t", "finetune")] * 3, clock=clock)
    clock.now += 20
    progress.finished(("t", "finetune"), 20.0)
    progress.start_run(("t", "finetune"))
    clock.now += 5
    # two runs of 20 s left, the one under way has had 5 of them
    assert progress.left == pytest.approx(35.0)
    clock.now += 60
    # an overrunning run is counted as due now, not as done
    assert progress.left == pytest.approx(20.0)
    progress.finished(("t", "finetune"), 65.0)
    assert progress.left == pytest.approx((20 + 65) / 2)


def test_the_overall_bar_shows_the_count_and_the_timing():
    clock = Clock()
    progress = StudyProgress([("t", "m")] * 3, clock=clock)
    out = io.StringIO()
    bar = OverallBar(progress, file=out)
    clock.now += 10
    progress.finished(("t", "m"), 10.0)
    bar.show("t 0.1 m seed 1")
    drawn = out.getvalue().split("\r")[-1]
    assert drawn.startswith("study [1/3] elapsed 0:10, ~20 s left |")
    assert drawn.endswith("|, now t 0.1 m seed 1")
    clock.now += 5
    progress.finished(("t", "m"), 5.0)
    progress.finished(("t", "m"), 5.0)
    bar.close()
    # the bar stays, whole, with the last count
    assert out.getvalue().endswith("\n")
    assert (
        out.getvalue()
        .rstrip("\n")
        .split("\r")[-1]
        .startswith("study [3/3] elapsed 0:15, all runs done |")
    )


def test_the_overall_bar_redraws_itself_while_a_run_goes_on():
    clock = Clock()
    progress = StudyProgress([("t", "m")] * 2, clock=clock)
    out = io.StringIO()
    bar = OverallBar(progress, file=out, every=0.01)
    try:
        bar.show("t 1 m seed 0")
        clock.now += 75  # no call to show(): the ticker redraws
        for _ in range(200):
            if "elapsed 1:15" in out.getvalue():
                break
            threading.Event().wait(0.01)
        assert "study [0/2] elapsed 1:15, time left unknown |" in out.getvalue()
        assert out.getvalue().split("\r")[-1].endswith("|, now t 1 m seed 0")
    finally:
        bar.close()
    assert not bar.ticker.is_alive()
