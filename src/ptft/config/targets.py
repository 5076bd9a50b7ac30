"""Resolve a ``_target_`` string to the class or function it names.

Two rules, by where the name comes from:

* :func:`locate`: a name from the config the user composed (their yaml, their command line) is
  imported as it is: the user chose it;
* :func:`resolve_from_file`: a name read from a file (a checkpoint's ``ptft_backbone.module``,
  a ``_target_`` in its hyper-parameters or run record) is resolved only to code of the kind
  the caller expects, defined in ptft (or, for optimizers, in ``torch.optim``), and nothing
  outside those packages is even imported to find out; a name the user's own config gives for
  the same node is allowed as well. A refusal is one :class:`ConfigError` line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ptft.errors import ConfigError

#: a dotted Python name: ``package.module.Name``
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def locate(path: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``, with a clear error otherwise."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import '{path}': {err}; check the _target_ in the config"
        ) from err


@dataclass(frozen=True)
class Kind:
    """What a name read from a file may resolve to: an object for which ``test`` holds, defined
    in one of ``packages`` (checked on the name before anything is imported, and on the
    object's ``__module__`` after)."""

    description: str
    packages: tuple[str, ...]
    test: Callable[[Any], bool]


def subclass_of(base: type) -> Callable[[Any], bool]:
    """A :class:`Kind` test: a class derived from ``base``."""
    return lambda obj: inspect.isclass(obj) and issubclass(obj, base)


def function_of(module: str) -> Callable[[Any], bool]:
    """A :class:`Kind` test: a function defined in the module named ``module``."""
    return lambda obj: inspect.isfunction(obj) and obj.__module__ == module


def within(name: str, packages: Collection[str]) -> bool:
    """Whether the module ``name`` is one of ``packages`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def resolve_from_file(
    value: Any, kind: Kind, what: str, allowed: Collection[str] = (), node: str | None = None
) -> Any:
    """The object ``value`` (a dotted name read from a file, at the field ``what``) names, when it
    is of ``kind``; a one-line :class:`ConfigError` otherwise. Nothing is called, and nothing is
    imported unless the name lies in ``kind.packages`` or is in ``allowed`` (the ``_target_``
    the user's own config gives for the same node, ``node``: then only the kind is checked)."""
    if not isinstance(value, str) or not DOTTED.fullmatch(value):
        raise ConfigError(f"{what}={value!r} is refused: it is not the dotted name of a class")
    trusted = value in allowed
    own = f"; a class of your own is allowed where your config names it ({node}._target_)"
    refused = f"{what}={value} is refused: it is not {kind.description}" + (own if node else "")
    module_name = value.rpartition(".")[0]
    if not trusted and not within(module_name, kind.packages):
        raise ConfigError(refused)  # not even imported: importing a module runs its code
    try:
        obj = locate(value)
    except ValueError as err:
        raise ConfigError(f"{what}={value} cannot be imported ({err.__cause__})") from None
    if not kind.test(obj) or (
        not trusted and not within(getattr(obj, "__module__", None) or "", kind.packages)
    ):
        raise ConfigError(refused)
    return obj
