"""What the entry points share: where the configs live, one-line errors, a clear word on a
missing sweep plugin, and the config of a run checked against the code before Hydra starts it.

Exit status: 0 when the command did what it was asked; 2 for any configuration error, ptft's
(:class:`ptft.errors.ConfigError`) and Hydra's and OmegaConf's alike (an override that does not
parse, an unknown key or option, a wrong type, a value left ``???``), each said in one line
``error: ...`` on stderr; 1 for a failure during the run (with its traceback).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from omegaconf.errors import OmegaConfBaseException

from ptft.errors import ConfigError, config_error_inside

#: the exit status of every configuration error (argparse's own for a bad flag)
CONFIG_ERROR = 2

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


def config_error_line(err: BaseException) -> str:
    """A configuration error as one line: ptft's as it is; Hydra's and OmegaConf's (a message
    over several lines, then the full key, the options, the search path, the cause) joined,
    the options listed with commas, the search path and type details left out."""
    if isinstance(err, ConfigError):
        return " ".join(str(err).split())
    inner = config_error_inside(err)
    if inner is not None:  # raised by a resolver (``${ptft.num_classes:}``): ptft's own words
        return " ".join(str(inner).split())
    parts, key = [], None
    for error in (err, err.__cause__):
        if error is None or (error is not err and not isinstance(error, OmegaConfBaseException)):
            continue
        text = []
        for raw in str(error).splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                break
            if line.startswith("full_key:"):
                key = key or line.partition(":")[2].strip()
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
                continue
            if line.startswith("See https://"):
                continue
            if text and raw[:1].isspace() and text[-1].endswith((":", ",")):
                text[-1] += f" {line},"  # an option of a list ("Available options in 'model':")
            else:
                text.append(line)
        text = [t.rstrip(",") for t in text]
        joined = " ".join(
            t if t.endswith((".", ":", ";", "!", "?")) or i == len(text) - 1 else f"{t}."
            for i, t in enumerate(text)
        )
        parts.append(joined if error is err else f"({joined})")
    line = " ".join(p for p in parts if p) or type(err).__name__
    if key and key not in line:
        line += f" (at {key})"
    return line


def fail(message: str) -> NoReturn:
    """Say a configuration error in one line and exit with :data:`CONFIG_ERROR`."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(CONFIG_ERROR)


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Print bad-input errors (:class:`ConfigError`, and OmegaConf's: a value left ``???``, an
    interpolation to no key) as one line and exit with status 2, instead of a traceback."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except (ConfigError, OmegaConfBaseException) as err:
            fail(config_error_line(err))

    return wrapper


@contextlib.contextmanager
def hydra_config_errors() -> Iterator[None]:
    """While Hydra runs (a multirun, ``--cfg``: what is not checked before), its configuration
    errors exit with status 2 in one line too, as ptft's do; Hydra's own report (status 1, a
    traceback) is kept for every other error, and for all of them with ``HYDRA_FULL_ERROR=1``."""
    from hydra._internal import utils
    from hydra.errors import CompactHydraException

    original = getattr(utils, "run_and_report", None)
    if original is None:  # another Hydra: its own report and status
        yield
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except (CompactHydraException, OmegaConfBaseException, ConfigError) as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            fail(config_error_line(err))
        except Exception as err:  # noqa: BLE001 -- Hydra reports it, as before
            caught = err

            def again() -> Any:
                raise caught

            return original(again)

    utils.run_and_report = run_and_report
    try:
        yield
    finally:
        utils.run_and_report = original


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
            fail(error)
        return entry_point(*args, **kwargs)

    return wrapper


#: Hydra's flags that show something instead of running: their config is composed (a command
#: line that does not compose is refused in one line) but not checked against the code, so
#: that ``--help`` and ``--cfg job`` import no torch
_NOT_A_RUN = ("cfg", "info", "resolve", "experimental_rerun")
#: flags that compose nothing
_NO_CONFIG = ("help", "hydra_help", "shell_completion")
#: what checks a run's config: its ``_target_`` nodes against the code they name
VALIDATE = "ptft.config.validate.validate"


def unknown_option(loader: Any, overrides: list[str]) -> str | None:
    """The one-line error for ``group=option`` (or a sweep over options) naming an option the
    group does not have, or None. Hydra refuses such a choice for most groups itself, but takes
    it silently for an optional group (``experiment``, ``debug``, ``hparams_search``): the
    run would go on without it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if override.is_delete() or not loader.repository.group_exists(group):
            continue
        value = override.value()
        choices = value.list if isinstance(value, ChoiceSweep) else [value]
        options = loader.get_group_options(group)
        for choice in choices:
            if isinstance(choice, str) and choice not in options:
                return (
                    f"{override.input_line}: {group} has no option '{choice}'; "
                    f"choose from {', '.join(options)}"
                )
    return None


def bad_override(overrides: list[str]) -> str | None:
    """``"<override>: "`` for the first of ``overrides`` that does not parse (Hydra's message
    does not say which), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception:  # noqa: BLE001 -- the one Hydra's message is about
            return f"{override}: "
    return None


def run_config_error(config_name: str, argv: list[str], check: str = VALIDATE) -> str | None:
    """The one-line error for the command line ``argv``, or None.

    The config is composed as Hydra will compose it: a command line that does not (an override
    that does not parse, a key or an option the config does not have, a value of the wrong
    type) is refused in Hydra's words, made one line. A plain run's config is then checked
    by ``check`` (a function's dotted path: :mod:`ptft.config.validate` by default), which
    runs while Hydra is set up, so it may compose other configs (the study composes its runs).
    A multirun's jobs check themselves as they start (:func:`ptft.runs.fit.train`: a bad job
    fails alone); ``--help``, ``--cfg`` and the like run nothing, and import no torch."""
    if "--version" in argv:
        return None
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ptft.config.targets import locate
    from ptft.config.validate import check_settings

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # a bad flag: argparse says so (status 2)
        return None
    if any(getattr(args, flag, None) for flag in _NO_CONFIG) or args.config_path is not None:
        return None
    if GlobalHydra.instance().is_initialized():  # inside another Hydra app: leave it to the run
        return None
    search_path = create_config_search_path(config_dir())
    if args.config_dir is not None:  # where Hydra puts it
        path = f"file://{Path(args.config_dir).resolve()}"
        search_path.prepend("command-line", path, anchor=SearchPathQuery(provider="schema"))
    multirun = bool(args.multirun)
    try:
        try:
            hydra = Hydra.create_main_hydra2(task_name="ptft", config_search_path=search_path)
            name = args.config_name or config_name
            mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            # a multirun's sweep values are left out: each job composes its own
            cfg = hydra.compose_config(name, args.overrides, run_mode=mode)
            error = unknown_option(hydra.config_loader, args.overrides)
        except Exception as err:  # noqa: BLE001 -- Hydra's own error, naming the override
            return f"{bad_override(args.overrides) or ''}{config_error_line(err)}"
        if error:
            return error
        if multirun or cfg.hydra.get("mode") == RunMode.MULTIRUN:  # a sweep (hparams_search)
            return None
        if any(getattr(args, flag, None) for flag in _NOT_A_RUN):
            return None
        try:
            check_settings(cfg)
            locate(check)(cfg)
        except ConfigError as err:
            return str(err)
        return None
    finally:
        GlobalHydra.instance().clear()


def validated(
    config_name: str, check: str = VALIDATE
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Stop with a one-line error (exit status 2) when the command line ``sys.argv`` does not
    compose or ``check`` refuses the config of the run it asks for (:func:`run_config_error`):
    before Hydra writes a run directory, and before anything is built. What reaches Hydra
    (a multirun's jobs, ``--cfg``) exits with status 2 for a configuration error too
    (:func:`hydra_config_errors`)."""

    def decorate(entry_point: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(entry_point)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            error = run_config_error(config_name, sys.argv[1:], check)
            if error:
                fail(error)
            with hydra_config_errors():
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
