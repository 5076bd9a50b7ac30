"""Lightning's tqdm bars for a run that is one of many: drawn below another bar and cleared
when they finish.

``ptft-pipeline`` draws its overall bar (runs done of the total, elapsed, time left) on the
top line of a terminal and gives each fine-tuning run this callback (``process_position=1``),
so the run's training, validation and test bars sit under it and leave nothing behind: the
overall bar stays where it is instead of being pushed down by one finished bar per run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class NestedProgressBar(TQDMProgressBar):
    """:class:`~lightning.pytorch.callbacks.TQDMProgressBar` whose bars never stay on screen
    (Lightning's own leaves its training and test bars where they end)."""

    def init_train_tqdm(self) -> Any:
        return _cleared(super().init_train_tqdm())

    def init_validation_tqdm(self) -> Any:
        return _cleared(super().init_validation_tqdm())

    def init_test_tqdm(self) -> Any:
        return _cleared(super().init_test_tqdm())


def _cleared(bar: Any) -> Any:
    """``bar`` set to clear its line when it closes."""
    bar.leave = False
    return bar
