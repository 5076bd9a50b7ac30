"""What the entry points share: where the configs live, one-line errors, a clear word on a
missing sweep plugin, and the config of a run checked against the code before Hydra starts it."""

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

#: ptft-generate without a prompt (checked by the entry point before torch loads, and by the driver)
NO_PROMPT = 'no prompt given: pass prompt="..." or prompts=["...","..."]'


def config_dir() -> str:
    """``conf/`` of a source checkout (editable install), else the copy packaged as
    ``ptft.conf``."""
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
    Plugin(
        "hydra/launcher",
        r"joblib",
        ("hydra_plugins.hydra_joblib_launcher", "joblib"),
        "hydra-joblib-launcher",
    ),
    Plugin(
        "hydra/launcher",
        r"submitit_.*|slurm",  # slurm: ptft's own config on top of the plugin's submitit_slurm
        ("hydra_plugins.hydra_submitit_launcher", "submitit"),
        "hydra-submitit-launcher",
    ),
    Plugin(
        "hydra/sweeper",
        r"optuna",
        ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
        "hydra-optuna-sweeper",
    ),
    # every search space in conf/hparams_search/ runs on the Optuna sweeper
    Plugin(
        "hparams_search",
        r".+",
        ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
        "hydra-optuna-sweeper",
    ),
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
                    return (
                        f"{arg} needs the package {plugin.package}, which is not installed: {fix}"
                    )
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


#: Hydra's flags that show something instead of running: nothing to check
_NOT_A_RUN = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "multirun",
    "experimental_rerun",
)
#: what checks a run's config: its ``_target_`` nodes against the code they name
VALIDATE = "ptft.config.validate.validate"


def run_config_error(config_name: str, argv: list[str], check: str = VALIDATE) -> str | None:
    """The one-line error that ``check`` (a function's dotted path: :mod:`ptft.config.validate`
    by default) raises for the config ``argv`` runs, or None. Only a plain run is checked:
    ``--help``, ``--cfg`` and the like run nothing (and import no torch), a multirun checks each
    job as it starts (:func:`ptft.runs.fit.train`), and a command line that does not compose is
    left to Hydra, whose message names the bad override. ``check`` runs while Hydra is set up,
    so it may compose other configs (the study composes its runs)."""
    if "--version" in argv:
        return None
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ptft.config.targets import locate

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # a bad flag: Hydra says so
        return None
    if any(getattr(args, flag, None) for flag in _NOT_A_RUN) or args.config_path is not None:
        return None
    if GlobalHydra.instance().is_initialized():  # inside another Hydra app: leave it to the run
        return None
    search_path = create_config_search_path(config_dir())
    if args.config_dir is not None:  # where Hydra puts it
        path = f"file://{Path(args.config_dir).resolve()}"
        search_path.prepend("command-line", path, anchor=SearchPathQuery(provider="schema"))
    try:
        try:
            hydra = Hydra.create_main_hydra2(task_name="ptft", config_search_path=search_path)
            name = args.config_name or config_name
            cfg = hydra.compose_config(name, args.overrides, run_mode=RunMode.RUN)
        except Exception:  # noqa: BLE001 -- Hydra reports it, naming the override
            return None
        if cfg.hydra.get("mode") == RunMode.MULTIRUN:  # a sweep in the config (hparams_search)
            return None
        try:
            locate(check)(cfg)
        except ConfigError as err:
            return str(err)
        return None
    finally:
        GlobalHydra.instance().clear()


def validated(
    config_name: str, check: str = VALIDATE
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Stop with a one-line error (exit status 2) when ``check`` refuses the config of the run
    ``sys.argv`` asks for (:func:`run_config_error`): before Hydra writes a run directory, and
    before anything is built."""

    def decorate(entry_point: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(entry_point)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            error = run_config_error(config_name, sys.argv[1:], check)
            if error:
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(2)
            return entry_point(*args, **kwargs)

        return wrapper

    return decorate


def quote_override(value: Any) -> str:
    """``value`` as a quoted Hydra override value, read back exactly as given (paths may hold
    ``=``, ``,``, spaces, quotes or ``${``). In Hydra's quoted strings a backslash is literal
    except before a quote, before ``${`` or at the end, where it escapes; those are doubled,
    the quotes and ``${`` escaped."""
    text = re.sub(
        r"(\\*)('|\$\{|$)",
        lambda m: m.group(1) * 2 + ("\\" if m.group(2) else "") + m.group(2),
        str(value),
    )
    return f"'{text}'"
