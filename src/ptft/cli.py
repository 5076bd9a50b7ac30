"""What the entry points share: where the configs live, one-line errors, and a clear word on a
missing sweep plugin."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

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


class Plugin(NamedTuple):
    """A Hydra plugin that a command-line choice needs (all come with the ``sweep`` extra)."""

    group: str  # the config group chosen on the command line
    options: str  # the options of that group that need the plugin (a regular expression)
    modules: tuple[str, ...]  # what must be importable
    package: str  # what pip installs


PLUGINS = [
    Plugin("hydra/launcher", r"joblib", ("hydra_plugins.hydra_joblib_launcher", "joblib"), "hydra-joblib-launcher"),
    Plugin(
        "hydra/launcher",
        r"submitit_.*|slurm",  # slurm: ptft's own config on top of the plugin's submitit_slurm
        ("hydra_plugins.hydra_submitit_launcher", "submitit"),
        "hydra-submitit-launcher",
    ),
    Plugin("hydra/sweeper", r"optuna", ("hydra_plugins.hydra_optuna_sweeper", "optuna"), "hydra-optuna-sweeper"),
    # every search space in conf/hparams_search/ runs on the Optuna sweeper
    Plugin("hparams_search", r".+", ("hydra_plugins.hydra_optuna_sweeper", "optuna"), "hydra-optuna-sweeper"),
]


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def missing_plugin(argv: list[str]) -> str | None:
    """The one-line error for a launcher or sweeper asked for on the command line and not
    installed (None when all are there). Checked before Hydra composes, whose own message
    would only list the options it found."""
    for arg in argv:
        match = re.fullmatch(r"[+~]*([\w/]+)(?:@[\w.]+)?=(.+)", arg)
        if not match:
            continue
        group, value = match.groups()
        for plugin in PLUGINS:
            if group == plugin.group and re.fullmatch(plugin.options, value):
                if not all(is_installed(m) for m in plugin.modules):
                    fix = "pip install 'ptft[sweep]'"
                    return f"{arg} needs the package {plugin.package}, which is not installed: {fix}"
    return None


def plugins_checked(entry_point: Callable[..., Any]) -> Callable[..., Any]:
    """Stop with a one-line error (exit status 2) when ``sys.argv`` asks for a missing plugin."""

    @functools.wraps(entry_point)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        error = missing_plugin(sys.argv[1:])
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2)
        return entry_point(*args, **kwargs)

    return wrapper
