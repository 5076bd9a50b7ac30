"""What the three entry points share: where the configs live, and one-line errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ptft.errors import ConfigError


def config_dir() -> str:
    """``conf/`` of a source checkout (editable install), else the copy packaged as ``ptft.conf``."""
    source = Path(__file__).resolve().parents[2] / "conf"
    if (source / "train.yaml").is_file():
        return str(source)
    packaged = resources.files("ptft") / "conf"
    if packaged.is_dir() and (packaged / "train.yaml").is_file():
        return str(packaged)
    raise RuntimeError("ptft's configs were not found: reinstall the package (pip install ptft)")


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Print bad-input errors as one line and exit with status 2, instead of a traceback."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
