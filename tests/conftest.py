"""Shared fixtures, the ``slow`` marker for everything under ``integration/``, the config store
and console settings every test session needs (as the entry points set them up), and one
thread a worker under ``pytest -n 2`` (pytest-xdist)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2: one worker a core, so each (and every process it starts) computes on one
    # thread instead of two workers oversubscribing the cores with two threads each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

from ptft import config

config.register()

from ptft.runs.console import quiet_libraries  # noqa: E402 -- as the entry points do when a run starts

quiet_libraries()

from tests.helpers import QUIET, compose_train  # noqa: E402

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end runs (everything under ``tests/integration/``) are ``slow``:
    ``pytest -m "not slow"`` is the fast set for the edit-test loop."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def simclr_run(tmp_path_factory) -> Path:
    """One short SimCLR pretraining run (2 epochs) shared by the handoff tests."""
    from ptft.runs.fit import train

    out = tmp_path_factory.mktemp("simclr")
    cfg = compose_train(
        [
            "experiment=digits_simclr",
            "trainer.max_epochs=2",
            "logger=none",
            "data.batch_size=128",
            *QUIET,
        ],
        out,
    )
    train(cfg)
    return out
