"""Check every ``_target_`` node of a composed config against the code it names.

The keys of a ``_target_`` node (``model``, ``model.backbone``, ``model.optimizer``,
``model.scheduler``, ``data``, ``callbacks.*``, ``logger.*``) are the arguments of the class
or function it names: :func:`validate` reads them from ``inspect.signature`` (a constructor
that forwards ``**kwargs`` to its base takes the base's arguments too), so a new objective,
backbone or data set needs no schema. Before anything is built, it fails with one line:

* a key the code does not take: the dotted key, and the keys it does take;
* a value whose annotation it can read (``int``, ``float``, ``str``, ``bool``, ``X | None``,
  ``list[...]``, ``Sequence[...]``, ``Mapping[...]``, ``Literal[...]``, a class) and that is
  not of that type: the key, the value and the type (an ``int`` is a ``float``; a ``bool`` is
  not an ``int``);
* a plain-dict argument annotated with a ``TypedDict`` (``model.knn``, ``model.augment``):
  its keys and values, the same way;
* a value outside the bound its annotation declares (``PositiveInt``, ``Probability``,
  ``NonEmptyStr``: :mod:`ptft.config.bounds`), items of a list included;
* a value the code refuses when built, for the classes of :data:`DRY_RUN` (torch's
  optimizers, Lightning's callbacks and loggers, ptft's callbacks): they are built once (an
  optimizer on a dummy parameter; not those of :data:`NOT_DRY_RUN`, whose constructor writes),
  and their own error is reported against the key that causes it;
* a value left ``???``;
* a class that needs a package of an extra that is not installed (MLflow's and W&B's loggers,
  :data:`EXTRAS_NEEDED`): the ``pip install 'ptft[...]'`` to run.

:func:`check_settings` checks the run-level settings the same way: the fields of the typed
schemas (``trainer.*``, ``paths.*``, ``ckpt_path``, ...) against their bounds, and a required
one left ``???``.

Annotations it cannot read (a ``Callable``, a protocol, a type variable) are not checked.
Defaults stay in the code; :func:`with_defaults` reads them for the checkpoint's record.
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import enum
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from ptft.config.bounds import (
    ExistingPath,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    Range,
    annotations,
    violation,
)
from ptft.config.targets import locate
from ptft.errors import ConfigError, config_error_inside

#: model keys that are run settings, not constructor arguments (read by :mod:`ptft.runs.build`)
MODEL_RUN_KEYS = ("pretrained", "monitor", "monitor_mode", "compile")
#: what each run setting takes
MODEL_RUN_TYPES: dict[str, Any] = {
    "pretrained": Annotated[
        str, ExistingPath("no such file or directory; pass a .ckpt file or a run directory")
    ]
    | None,
    "monitor": NonEmptyStr,
    "monitor_mode": Literal["min", "max"],
    "compile": bool,
}
#: keys every ``_target_`` node may hold: Hydra's own
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
#: arguments the run passes itself, per node: never a config key
SUPPLIED: dict[str, frozenset[str]] = {
    "model.backbone": frozenset({"input_shape"}),  # from model.input_shape
    "model.optimizer": frozenset({"params"}),  # the parameter groups
    "model.scheduler": frozenset({"optimizer", "total_steps"}),
    "data": frozenset({"with_labels", "monitor_labels"}),  # what the model reads
}
#: keys that are allowed without being arguments, per node, with what they take
EXTRA: dict[str, dict[str, Any]] = {"model": MODEL_RUN_TYPES}
#: keys a node must set although the callee has a default: ptft reads them itself
REQUIRED: dict[str, dict[str, str]] = {
    "model.optimizer": {"lr": "the base learning rate, read by ptft too (e.g. 1e-3)"},
}
#: top-level nodes whose every entry is a ``_target_`` node (or null: left out)
NODE_LISTS = ("callbacks", "logger")
#: where the classes are that validation builds once, so that their own checks of their
#: arguments speak before the run: their constructors are cheap and write nothing
DRY_RUN = (
    "torch.optim.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "ptft.callbacks.",
)
#: library classes that need a package ptft installs only with an extra: class -> (the module
#: it imports, the extra); a config that names one without it fails in one line before the run
EXTRAS_NEEDED: dict[str, tuple[str, str]] = {
    "lightning.pytorch.loggers.mlflow.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.wandb.WandbLogger": ("wandb", "wandb"),
}
#: classes of :data:`DRY_RUN` that are not built while validating: their constructor writes or
#: connects (MLflow's opens its tracking store: creates the SQLite file, or calls the server)
NOT_DRY_RUN = frozenset({"lightning.pytorch.loggers.mlflow.MLFlowLogger"})
#: library classes whose ``**kwargs`` go to another class (and the arguments they pass it
#: themselves): the keys they take are that class's
FORWARDED: dict[str, tuple[str, frozenset[str]]] = {
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": (
        "torch.utils.tensorboard.writer.SummaryWriter",
        frozenset({"log_dir"}),
    ),
}
#: a depth that may be -1 for all of it
OrAll = Annotated[int, Range(ge=-1)]
#: bounds of library arguments that the library does not check when built (a bad value fails,
#: or misbehaves, only later in the run): class -> argument -> what it takes
LIBRARY_BOUNDS: dict[str, dict[str, Any]] = {
    "lightning.pytorch.loggers.csv_logs.CSVLogger": {"flush_logs_every_n_steps": PositiveInt},
    "lightning.pytorch.callbacks.progress.rich_progress.RichProgressBar": {
        "refresh_rate": NonNegativeInt  # 0: no bar
    },
    "lightning.pytorch.callbacks.progress.tqdm_progress.TQDMProgressBar": {
        "refresh_rate": NonNegativeInt
    },
    "lightning.pytorch.callbacks.rich_model_summary.RichModelSummary": {"max_depth": OrAll},
    "lightning.pytorch.callbacks.model_summary.ModelSummary": {"max_depth": OrAll},
}
#: nodes whose ``null`` values are dropped before the call (the callee's default applies)
NULL_DROPPED = frozenset({"model.optimizer", "model.scheduler"})
#: top-level nodes that are not searched: Hydra's own, and the Trainer (a typed schema)
SKIPPED = frozenset({"hydra", "trainer"})


class _Unknown:
    """A value that cannot be read before the run starts (``${hydra:runtime.output_dir}``)."""


UNRESOLVED = _Unknown()
MISSING = object()


# ------------------------------------------------------------------------- signatures
class Signature(typing.NamedTuple):
    """What a ``_target_`` takes: its keyword arguments with their annotations, and whether it
    takes any other key too (``**kwargs`` that go to third-party code)."""

    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    open: bool


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of ``fn``, bounds kept (``Annotated``); the ones that do not
    evaluate are left out."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a name imported only for type checkers: evaluate one by one
        out = {}
        namespace = getattr(fn, "__globals__", {})
        for name, ann in getattr(fn, "__annotations__", {}).items():
            try:
                out[name] = eval(ann, namespace) if isinstance(ann, str) else ann
            except Exception:
                continue
        return out


def _third_party(cls: type) -> bool:
    """Whether ``cls`` comes from an installed library other than ptft: its ``**kwargs`` may go
    anywhere (TensorBoardLogger hands them to SummaryWriter), not necessarily to its base."""
    top = cls.__module__.partition(".")[0]
    if top == "ptft":
        return False
    module = sys.modules.get(top)
    path = getattr(module, "__file__", None) or ""
    parts = set(os.path.normpath(path).split(os.sep))
    return top in sys.stdlib_module_names or bool(parts & {"site-packages", "dist-packages"})


def _keyword_params(
    fn: Callable[..., Any], skip_first: bool
) -> tuple[list[inspect.Parameter], bool]:
    params = list(inspect.signature(fn).parameters.values())
    if skip_first:
        params = params[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def signature(target: Any) -> Signature:
    """The arguments ``target`` (a class or a function) takes by keyword.

    A class's ``__init__`` that takes ``**kwargs`` is followed to the next ``__init__`` along
    the MRO (ptft's classes and the user's own forward them to the base), except in an
    installed library, whose ``**kwargs`` make the node open."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    if not inspect.isclass(target):
        try:
            named, var_kw = _keyword_params(target, skip_first=False)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            return Signature({}, {}, True)
        fn_hints = _hints(target)
        return Signature(
            {p.name: p for p in named},
            {p.name: fn_hints[p.name] for p in named if p.name in fn_hints},
            var_kw,
        )
    for cls in target.__mro__:
        if cls is object:
            break
        init = vars(cls).get("__init__")
        if init is None:
            continue
        try:
            named, var_kw = _keyword_params(init, skip_first=True)
        except (TypeError, ValueError):
            return Signature(params, hints, True)
        init_hints = _hints(init)
        for p in named:
            if p.name not in params:
                params[p.name] = p
                if p.name in init_hints:
                    hints[p.name] = init_hints[p.name]
        if not var_kw:
            return Signature(params, hints, False)
        if _third_party(cls):
            forward = FORWARDED.get(f"{cls.__module__}.{cls.__qualname__}")
            if forward is None:
                return Signature(params, hints, True)
            to, supplied = forward  # the keys are the arguments of the class they go to
            taken = signature(locate(to))
            for name, p in taken.params.items():
                if name not in params and name not in supplied:
                    params[name] = p
                    if name in taken.hints:
                        hints[name] = taken.hints[name]
            return Signature(params, hints, taken.open)
    return Signature(params, hints, False)


def with_defaults(
    config: Mapping[str, Any], supplied: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``config`` (a ``_target_`` node) completed with the defaults of the arguments it leaves
    out, as plain values (tuples as lists): what a checkpoint records of an architecture, so
    that it rebuilds the same whatever later versions of the code default to."""
    sig = signature(locate(config["_target_"]))
    defaults = {
        name: _plain_default(p.default)
        for name, p in sig.params.items()
        if p.default is not inspect.Parameter.empty and name not in supplied
    }
    return {"_target_": config["_target_"], **defaults, **config}


def _plain_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain_default(v) for v in value]
    return value


# ---------------------------------------------------------------------------- types
def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "None"
    if typing.is_typeddict(ann):
        return "a mapping"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann) if a is not Ellipsis)
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{args}]" if args else base
    return getattr(ann, "__name__", str(ann))


def _value_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _matches(value: Any, ann: Any) -> bool | None:
    """Whether a config value (``None``, a bool, number, string, list or dict) fits the
    annotation ``ann``; None when ``ann`` says nothing that can be checked."""
    if ann is Any or ann is object or ann is inspect.Parameter.empty:
        return True
    if ann is None or ann is type(None):
        return value is None
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if origin is typing.Literal:
        return value in args
    if isinstance(value, dict) and "_target_" in value:
        return None  # built by Hydra before the call: its own node is checked
    if ann is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann in (str, bool):
        return isinstance(value, ann)
    if typing.is_typeddict(ann):
        return isinstance(value, dict)
    if origin is tuple or ann is tuple:
        if not isinstance(value, list | tuple):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _all_match(value, args[0] if args else Any)
        if len(args) != len(value):
            return False
        return _combine(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection) or ann in (
        list,
        abc.Sequence,
    ):
        if not isinstance(value, list | tuple):
            return False
        return _all_match(value, args[0] if args else Any)
    if origin in (dict, abc.Mapping, abc.MutableMapping) or ann in (dict, abc.Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return _combine(
                [
                    *(_matches(k, args[0]) for k in value),
                    *(_matches(v, args[1]) for v in value.values()),
                ]
            )
        return True
    if isinstance(ann, type):
        if issubclass(ann, os.PathLike):
            return isinstance(value, str)
        if issubclass(ann, enum.Enum):
            return None
        try:
            return isinstance(value, ann)
        except TypeError:  # a protocol that cannot be checked at runtime
            return None
    return None  # a Callable, a TypeVar, a string that did not evaluate, ...


def _all_match(values: Any, ann: Any) -> bool | None:
    return _combine(_matches(v, ann) for v in values)


def _combine(results: Any) -> bool | None:
    results = list(results)
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


# ---------------------------------------------------------------------------- values
def _lenient(node: Any, skip: frozenset[str] = frozenset()) -> Any:
    """A config node as plain values, each interpolation resolved where it can be already
    (``UNRESOLVED`` where not, e.g. ``${hydra:runtime.output_dir}`` before a run starts), and
    ``MISSING`` for ``???``; the keys in ``skip`` (of this node) are left out, unread."""
    if isinstance(node, DictConfig):
        if node._is_none():
            return None
        out = {}
        for key in node.keys():
            if key in skip:
                continue
            if OmegaConf.is_missing(node, key):
                out[key] = MISSING
                continue
            try:
                value = node[key]
            except Exception as err:
                if inner := config_error_inside(err):  # a ptft resolver refused the value
                    raise inner from None
                out[key] = UNRESOLVED
                continue
            out[key] = _lenient(value)
        return out
    if isinstance(node, ListConfig):
        if node._is_none():
            return None
        out_list = []
        for i in range(len(node)):
            try:
                out_list.append(_lenient(node[i]))
            except Exception:
                out_list.append(UNRESOLVED)
        return out_list
    if isinstance(node, Mapping):
        return {k: _lenient(v) for k, v in node.items() if k not in skip}
    if isinstance(node, list | tuple):
        return [_lenient(v) for v in node]
    return node


def _known(value: Any) -> bool:
    """Whether ``value`` holds nothing that is still unresolved."""
    if value is UNRESOLVED or value is MISSING:
        return False
    if isinstance(value, dict):
        return all(_known(v) for v in value.values())
    if isinstance(value, list):
        return all(_known(v) for v in value)
    return True


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return "''" if value == "" else str(value)


# -------------------------------------------------------------------------- checking
def validate(cfg: Mapping[str, Any]) -> None:
    """Check a composed config: its run-level settings (:func:`check_settings`) and every
    ``_target_`` node (all but ``hydra`` and ``trainer``) against the code it names; raise
    :class:`ConfigError` with one line at the first problem."""
    derived: frozenset[str] = frozenset()
    if isinstance(cfg, DictConfig):
        check_settings(cfg)
        derived = frozenset(_interpolated(cfg, ""))
    # the skipped nodes are not even read: reading hydra.run.dir claims a run directory
    # (ptft.config.resolvers.unique)
    for key, value in _lenient(cfg, skip=SKIPPED).items():
        if key in NODE_LISTS and isinstance(value, dict) and "_target_" not in value:
            _check_node_list(value, str(key))
        _search(value, str(key), derived)


def _interpolated(node: DictConfig, path: str) -> Iterator[str]:
    """The dotted keys under ``node`` whose values are interpolations of other keys
    (``data.input_shape: ["${data.max_length}"]``, ``model.num_classes``)."""
    for key in node.keys():
        if not path and key in SKIPPED:
            continue
        where = f"{path}.{key}" if path else str(key)
        child = node._get_node(key)
        if OmegaConf.is_interpolation(node, key):
            yield where
        elif isinstance(child, DictConfig):
            yield from _interpolated(child, where)
        elif isinstance(child, ListConfig) and any(
            OmegaConf.is_interpolation(child, i) for i in range(len(child))
        ):
            yield where


def check_settings(cfg: DictConfig) -> None:
    """Check the fields of the typed schemas in ``cfg`` (the run-level settings: ``seed``,
    ``ckpt_path``, ``trainer.*``, ``paths.*``, a study's ``tasks.*``) against the bounds their
    annotations declare (:mod:`ptft.config.bounds`), and that none required is left ``???``.
    Values that resolve only when the run starts (``${hydra:...}``) are left alone; ``hydra``
    itself is not read. Values set as interpolations of others are checked last, so that a bad
    value is named where it was set (``paths.output_dir``, not ``trainer.default_root_dir``)."""
    _check_schema_node(cfg, "", derived=False)
    _check_schema_node(cfg, "", derived=True)


def _check_schema_node(node: DictConfig, path: str, derived: bool) -> None:
    """Check the settings under ``node``: those set as interpolations when ``derived``, else
    the others."""
    kind = OmegaConf.get_type(node)
    hints = annotations(kind) if dataclasses.is_dataclass(kind) else {}
    for key in node.keys():
        key = str(key)
        if not path and key == "hydra":  # reading hydra.run.dir would claim a run directory
            continue
        where = f"{path}.{key}" if path else key
        if OmegaConf.is_missing(node, key):
            if key in hints:
                raise ConfigError(f"{where} is required (it is ???): pass {where}=...")
            continue  # a _target_ node's argument: check_node says so
        try:
            value = node[key]
        except InterpolationKeyError as err:  # ${model.nosuch}: a key no config has
            raw = node._get_node(key)._value()
            raise ConfigError(
                f"{where}={raw}: {str(err).splitlines()[0]}; interpolate a key the config has"
            ) from None
        except Exception as err:  # resolves only when the run starts
            if inner := config_error_inside(err):  # a ptft resolver refused the value
                raise inner from None
            continue
        if isinstance(value, DictConfig):
            if not value._is_none():
                _check_schema_node(value, where, derived)
            continue
        if key in hints and OmegaConf.is_interpolation(node, key) == derived:
            plain = _lenient(value)
            if _known(plain) and (problem := violation(plain, hints[key])):
                raise ConfigError(f"{where}={_show(plain)}: {problem}")


def _check_node_list(value: Mapping[str, Any], path: str) -> None:
    """Every entry of ``callbacks`` and ``logger`` is a ``_target_`` node, or null (left out)."""
    for key, entry in value.items():
        if entry is not None and not (isinstance(entry, dict) and "_target_" in entry):
            raise ConfigError(
                f"{path}.{key}={_show(entry)}: each entry of {path} is a node with a _target_ "
                f"(or null to leave it out); to set an argument, name it: {path}.<name>.<key>=..."
            )


def _search(value: Any, path: str, derived: frozenset[str] = frozenset()) -> None:
    """Check the ``_target_`` nodes in ``value`` (a node of its own, or nested deeper)."""
    if isinstance(value, dict):
        if "_target_" in value:
            check_node(value, path, derived)
            return
        for key, child in value.items():
            _search(child, f"{path}.{key}", derived)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _search(child, f"{path}[{i}]", derived)


def check_node(node: Mapping[str, Any], path: str, derived: frozenset[str] = frozenset()) -> None:
    """Check one ``_target_`` node (plain values) at the dotted ``path``, and its nested ones;
    the keys in ``derived`` (interpolations of others) last, so that a bad value is named
    where it was set (``data.max_length``, not ``data.input_shape`` that repeats it)."""
    target = node["_target_"]
    if not isinstance(target, str):  # an interpolation that resolves only when the run starts
        return
    try:
        cls = locate(target)
    except ValueError as err:
        raise ConfigError(f"{path}._target_={target}: {err}") from None
    full_name = f"{getattr(cls, '__module__', '')}.{_name(cls)}"
    if full_name in EXTRAS_NEEDED:
        module, extra_name = EXTRAS_NEEDED[full_name]
        if not _importable(module):
            raise ConfigError(
                f"{path}: {target} needs {module}, which is not installed: "
                f"pip install 'ptft[{extra_name}]'"
            )
    sig = signature(cls)
    supplied = SUPPLIED.get(path, frozenset())
    extra = EXTRA.get(path, {})
    library_bounds = LIBRARY_BOUNDS.get(full_name, {})
    valid = sorted(({*sig.params} - supplied) | set(extra))
    for key, why in REQUIRED.get(path, {}).items():
        if node.get(key) is None:
            raise ConfigError(f"{path}.{key} is not set: give {why}")
    for key, value in sorted(node.items(), key=lambda item: f"{path}.{item[0]}" in derived):
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        where = f"{path}.{key}"
        if value is MISSING:
            raise ConfigError(f"{where} has no value (???): set it, e.g. {where}=...")
        if path in NULL_DROPPED and value is None:
            continue  # left out of the call: the callee's default applies
        if key in supplied:
            raise ConfigError(
                f"{where}: ptft passes it itself, not the config; valid keys: {', '.join(valid)}"
            )
        if key in extra:
            check_value(value, extra[key], where)
        elif key not in valid:
            if not sig.open:
                raise ConfigError(
                    f"{where}: {target} takes no such argument; valid keys: {', '.join(valid)}"
                )
        else:
            check_value(value, sig.hints.get(key, inspect.Parameter.empty), where)
            if key in library_bounds:
                check_value(value, library_bounds[key], where)
        _search(value, where, derived)
    if (
        isinstance(cls, type)
        and cls.__module__.startswith(DRY_RUN)
        and full_name not in NOT_DRY_RUN
    ):
        _dry_run(cls, node, path)


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (found, not blocked), without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _name(target: Any) -> str:
    return getattr(target, "__qualname__", getattr(target, "__name__", ""))


def check_value(value: Any, ann: Any, where: str) -> None:
    """Raise :class:`ConfigError` when ``value`` (at ``where``) does not fit ``ann`` or a bound
    it declares; a ``TypedDict`` in ``ann`` checks the keys and values of a plain dict."""
    if not _known(value):
        if isinstance(value, dict):
            for td in _typeddicts(ann):
                _check_typeddict(value, td, where)
        return
    if _matches(value, ann) is False:
        raise ConfigError(
            f"{where}={_show(value)}: expected {_type_name(ann)}, got {_value_type(value)}"
        )
    if problem := violation(value, ann):
        raise ConfigError(f"{where}={_show(value)}: {problem}")
    if isinstance(value, dict) and "_target_" not in value:
        for td in _typeddicts(ann):
            _check_typeddict(value, td, where)


def _typeddicts(ann: Any) -> list[type]:
    """The TypedDicts in an annotation (``Config``, ``Config | None``)."""
    if typing.is_typeddict(ann):
        return [ann]
    if typing.get_origin(ann) in (typing.Union, types.UnionType, typing.Annotated):
        return [a for arg in typing.get_args(ann) for a in _typeddicts(arg)]
    return []


def _check_typeddict(value: Mapping[str, Any], td: type, where: str) -> None:
    hints = typing.get_type_hints(td, include_extras=True)
    for key, item in value.items():
        if key not in hints:
            raise ConfigError(
                f"{where}.{key}: not a key of {where}; valid keys: {', '.join(hints)}"
            )
        if item is MISSING:
            raise ConfigError(f"{where}.{key} has no value (???): set it, e.g. {where}.{key}=...")
        check_value(item, hints[key], f"{where}.{key}")


def _dry_run(cls: type, node: Mapping[str, Any], path: str) -> None:
    """Build a library's class (:data:`DRY_RUN`) once with the node's known values, and report
    its refusal as one line against the key that causes it: the key without which it builds
    (the node, when no single key does). Skipped while a required argument is not known yet
    (a path that resolves when the run starts)."""
    kwargs = {
        str(k): v
        for k, v in node.items()
        if k not in HYDRA_KEYS
        and _known(v)
        and not (path in NULL_DROPPED and v is None)
        and not (isinstance(v, dict) and "_target_" in v)
    }
    torch = sys.modules.get("torch")
    optimizer = torch is not None and issubclass(cls, torch.optim.Optimizer)
    params, _ = _keyword_params(cls.__init__, skip_first=True)
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    if any(name not in kwargs for name in required[1 if optimizer else 0 :]):
        return

    def failure(arguments: dict[str, Any]) -> Exception | None:
        """The library's refusal of ``arguments``, or None when it builds."""
        try:
            if optimizer:  # one dummy parameter: what an optimizer checks needs no model
                cls([torch.nn.Parameter(torch.zeros(1))], **arguments)
            else:
                cls(**arguments)
        except Exception as err:  # noqa: BLE001 -- the library's own check
            return err
        return None

    error = failure(kwargs)
    if error is None:
        return
    reason = " ".join(str(error).split()) or type(error).__name__
    for key, value in kwargs.items():
        if failure({k: v for k, v in kwargs.items() if k != key}) is None:
            if isinstance(error, ConfigError) and f"{path}.{key}" in reason:
                raise ConfigError(reason)  # ptft's own words, naming the key already
            raise ConfigError(
                f"{path}.{key}={_show(value)}: {reason} ({node['_target_']} refuses it)"
            )
    raise ConfigError(f"{path}: {reason} ({node['_target_']} refuses these values)")
