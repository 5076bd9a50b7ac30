"""How far a study is: runs done of its total, the time since this start, and the time left.

A study is dozens of runs; each run's log line starts ``[23/84]`` and ends
``elapsed 12:01, ~6 min left``, and on a terminal one overall bar says the same above the
runs' own (Lightning's) bars. The estimate of a run still to come is the mean time of the
finished runs of its kind (its task, pretraining arm and method: an SVC fit takes a blink, a
fine-tuning run minutes, and two arms' backbones may differ in size), else of every finished
run. Runs kept from an earlier start of the study count as
done, and their recorded times count in the estimate; the elapsed time is this start's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import IO, Any

from ptft.errors import ConfigError


def clock_text(seconds: float) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` from one (``12:01``, ``1:02:03``)."""
    whole = int(max(seconds, 0.0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def left_text(seconds: float | None) -> str:
    """The time left, rounded as a person says it: ``~40 s``, ``~6 min``, ``~1 h 05 min``
    (None: no run has finished yet, so there is nothing to estimate from)."""
    if seconds is None:
        return "time left unknown"
    if seconds < 60:
        return f"~{round(seconds)} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min left"
    return f"~{minutes // 60} h {minutes % 60:02d} min left"


def run_estimate(durations: dict[Hashable, list[float]], kind: Hashable) -> float | None:
    """Seconds one run of ``kind`` should take: the mean of the finished runs of its kind, or of
    all finished runs when none of its kind has finished (None when nothing has)."""
    times = durations.get(kind) or [s for runs in durations.values() for s in runs]
    return sum(times) / len(times) if times else None


def estimate_left(
    durations: dict[Hashable, list[float]], remaining: Counter[Hashable]
) -> float | None:
    """Seconds the ``remaining`` runs (a count per kind) should take, each at
    :func:`run_estimate`; 0 when nothing remains, None when something remains and nothing
    finished."""
    total = 0.0
    for kind, n in remaining.items():
        if n > 0:
            each = run_estimate(durations, kind)
            if each is None:
                return None
            total += n * each
    return total


class StudyProgress:
    """The runs of a study (a kind per run, e.g. ``(task, arm, method)``) counted as they finish;
    ``clock`` (seconds, monotonic) is injected so tests can drive the time."""

    def __init__(self, kinds: Iterable[Hashable], clock: Callable[[], float] = time.monotonic):
        self.remaining: Counter[Hashable] = Counter(kinds)
        self.total = sum(self.remaining.values())
        self.done = 0
        self.durations: dict[Hashable, list[float]] = defaultdict(list)
        self.clock = clock
        self.started = clock()
        #: the run under way, and when it started
        self.current: tuple[Hashable, float] | None = None

    def start_run(self, kind: Hashable) -> None:
        """A run of ``kind`` starts now: the time left counts down while it runs."""
        self.current = (kind, self.clock())

    def finished(self, kind: Hashable, seconds: float) -> None:
        """One run of ``kind`` is done (run now, or kept from an earlier start) in ``seconds``."""
        if self.remaining[kind] <= 0:
            raise ConfigError(f"a run of kind {kind!r} finished, but none was left to run")
        self.remaining[kind] -= 1
        self.done += 1
        self.durations[kind].append(float(seconds))
        self.current = None

    @property
    def elapsed(self) -> float:
        """Seconds since this start of the study."""
        return self.clock() - self.started

    @property
    def left(self) -> float | None:
        """Estimated seconds until every run is done (:func:`estimate_left`), less the time the
        run under way has had (at most its own estimate: an overrunning run is not "done")."""
        left = estimate_left(self.durations, self.remaining)
        if left is None or self.current is None:
            return left
        kind, since = self.current
        own = run_estimate(self.durations, kind) or 0.0
        return left - min(self.clock() - since, own)

    @property
    def count(self) -> str:
        """``[23/84]``."""
        return f"[{self.done}/{self.total}]"

    @property
    def timing(self) -> str:
        """``elapsed 12:01, ~6 min left`` (``all runs done`` once none is left)."""
        left = "all runs done" if self.done == self.total else left_text(self.left)
        return f"elapsed {clock_text(self.elapsed)}, {left}"


class OverallBar:
    """One tqdm bar for the whole study, at the top (position 0), that stays when the study
    ends; the runs' own bars (:class:`ptft.callbacks.progress.NestedProgressBar`) sit below it.
    Lightning draws on stdout, so this bar does too. With ``every`` seconds, a daemon thread
    redraws it that often, so the elapsed time and the time left move during a long run."""

    def __init__(
        self, progress: StudyProgress, file: IO[str] | None = None, every: float | None = None
    ) -> None:
        from tqdm import tqdm

        self.progress = progress
        self.running = ""
        self.bar: Any = tqdm(
            total=progress.total,
            initial=progress.done,
            position=0,
            leave=True,
            dynamic_ncols=True,
            file=file if file is not None else sys.stdout,
            # tqdm writes a postfix as ", <text>"
            bar_format="{desc} |{bar}|{postfix}",
        )
        self.show("")
        self.stop = threading.Event()
        self.ticker: threading.Thread | None = None
        if every is not None:
            self.ticker = threading.Thread(target=self._tick, args=(every,), daemon=True)
            self.ticker.start()

    def _tick(self, every: float) -> None:
        while not self.stop.wait(every):
            self.show(self.running)

    def show(self, running: str) -> None:
        """Redraw the count and timing; ``running`` names the run under way (or nothing)."""
        self.running = running
        self.bar.n = self.progress.done
        self.bar.set_description_str(
            f"study {self.progress.count} {self.progress.timing}", refresh=False
        )
        self.bar.set_postfix_str(f"now {running}" if running else "", refresh=True)

    def close(self) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        self.show("")
        self.bar.close()
