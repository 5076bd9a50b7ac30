"""Resolve a ``_target_`` string to the class or function it names."""

from __future__ import annotations

import importlib
from typing import Any


def locate(path: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``, with a clear error otherwise."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import '{path}': {err}; check the _target_ in the config"
        ) from err
