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
* a value left ``???``.

Annotations it cannot read (a ``Callable``, a protocol, a type variable) are not checked.
Defaults stay in the code; :func:`with_defaults` reads them for the checkpoint's record.
"""

from __future__ import annotations

import collections.abc as abc
import enum
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptft.config.targets import locate
from ptft.errors import ConfigError

#: model keys that are run settings, not constructor arguments (read by :mod:`ptft.runs.build`)
MODEL_RUN_KEYS = ("pretrained", "monitor", "monitor_mode", "compile")
#: keys every ``_target_`` node may hold: Hydra's own
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
#: arguments the run passes itself, per node: never a config key
SUPPLIED: dict[str, frozenset[str]] = {
    "model.backbone": frozenset({"input_shape"}),  # from model.input_shape
    "model.optimizer": frozenset({"params"}),  # the parameter groups
    "model.scheduler": frozenset({"optimizer", "total_steps"}),
    "data": frozenset({"with_labels", "monitor_labels"}),  # what the model reads
}
#: keys that are allowed without being arguments, per node
EXTRA: dict[str, tuple[str, ...]] = {"model": MODEL_RUN_KEYS}
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
    """The evaluated annotations of ``fn``; the ones that do not evaluate are left out."""
    try:
        return typing.get_type_hints(fn)
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
            return Signature(params, hints, True)
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
def _lenient(node: Any) -> Any:
    """A config node as plain values, each interpolation resolved where it can be already
    (``UNRESOLVED`` where not, e.g. ``${hydra:runtime.output_dir}`` before a run starts), and
    ``MISSING`` for ``???``."""
    if isinstance(node, DictConfig):
        if node._is_none():
            return None
        out = {}
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                out[key] = MISSING
                continue
            try:
                value = node[key]
            except Exception:
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
        return {k: _lenient(v) for k, v in node.items()}
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
    return "null" if value is None else str(value)


# -------------------------------------------------------------------------- checking
def validate(cfg: Mapping[str, Any]) -> None:
    """Check every ``_target_`` node of a composed config (all but ``hydra`` and ``trainer``)
    against the code it names; raise :class:`ConfigError` with one line at the first problem."""
    values = _lenient(cfg)
    for key, value in values.items():
        if key not in SKIPPED:
            _search(value, str(key))


def _search(value: Any, path: str) -> None:
    """Check the ``_target_`` nodes in ``value`` (a node of its own, or nested deeper)."""
    if isinstance(value, dict):
        if "_target_" in value:
            check_node(value, path)
            return
        for key, child in value.items():
            _search(child, f"{path}.{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _search(child, f"{path}[{i}]")


def check_node(node: Mapping[str, Any], path: str) -> None:
    """Check one ``_target_`` node (plain values) at the dotted ``path``, and its nested ones."""
    target = node["_target_"]
    if not isinstance(target, str):  # an interpolation that resolves only when the run starts
        return
    try:
        sig = signature(locate(target))
    except ValueError as err:
        raise ConfigError(f"{path}._target_={target}: {err}") from None
    supplied = SUPPLIED.get(path, frozenset())
    valid = sorted(({*sig.params} - supplied) | set(EXTRA.get(path, ())))
    for key, value in node.items():
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
        if key not in valid:
            if not sig.open:
                raise ConfigError(
                    f"{where}: {target} takes no such argument; valid keys: {', '.join(valid)}"
                )
        else:
            check_value(value, sig.hints.get(key, inspect.Parameter.empty), where)
        _search(value, where)


def check_value(value: Any, ann: Any, where: str) -> None:
    """Raise :class:`ConfigError` when ``value`` (at ``where``) does not fit ``ann``; a
    ``TypedDict`` in ``ann`` checks the keys and values of a plain dict."""
    if not _known(value):
        if isinstance(value, dict):
            for td in _typeddicts(ann):
                _check_typeddict(value, td, where)
        return
    if _matches(value, ann) is False:
        raise ConfigError(
            f"{where}={_show(value)}: expected {_type_name(ann)}, got {_value_type(value)}"
        )
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
    hints = typing.get_type_hints(td)
    for key, item in value.items():
        if key not in hints:
            raise ConfigError(
                f"{where}.{key}: not a key of {where}; valid keys: {', '.join(hints)}"
            )
        if item is MISSING:
            raise ConfigError(f"{where}.{key} has no value (???): set it, e.g. {where}.{key}=...")
        check_value(item, hints[key], f"{where}.{key}")
