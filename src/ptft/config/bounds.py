"""Bounds on argument values, declared where the argument is: in its annotation.

    batch_size: PositiveInt = 128            # Annotated[int, Range(gt=0)]
    temperature: PositiveFloat = 0.2         # Annotated[float, Range(gt=0)]
    cache_dir: NonEmptyStr                   # Annotated[str, NonEmpty()]

The type stays the plain ``int``, ``float`` or ``str`` for everything else that reads the
annotation (OmegaConf, type checkers). :mod:`ptft.config.validate` reads the bound too, and
refuses a config value outside it with one line naming the key, before anything is built or
written; a constructor that is also called from Python checks its own arguments with
:func:`check_arguments`. A leaf module: anything in ptft may import it.
"""

from __future__ import annotations

import collections.abc as abc
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from ptft.errors import ConfigError


class Bound:
    """A condition on a config value, read from an annotation's metadata."""

    def problem(self, value: Any) -> str | None:
        """How ``value`` breaks the condition (``"must be > 0"``), or None when it holds.
        Values of another type are the type check's business: None."""
        raise NotImplementedError


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


@dataclass(frozen=True)
class Range(Bound):
    """``gt < value``, ``ge <= value``, ``value < lt``, ``value <= le`` (None: no limit); NaN is
    never in range."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __str__(self) -> str:
        low = (
            f"({_num(self.gt)}"
            if self.gt is not None
            else f"[{_num(self.ge)}"
            if self.ge is not None
            else ""
        )
        high = (
            f"{_num(self.lt)})"
            if self.lt is not None
            else f"{_num(self.le)}]"
            if self.le is not None
            else ""
        )
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        return f"{'<' if high[-1] == ')' else '<='} {high[:-1]}"

    def holds(self, value: float) -> bool:
        return not (
            math.isnan(value)
            or (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def problem(self, value: Any) -> str | None:
        if not _number(value) or self.holds(value):
            return None
        return f"out of range: give a value {self}"


@dataclass(frozen=True)
class NonEmpty(Bound):
    """A string (or list) that is not empty: an empty path would mean the current folder."""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str | list | tuple) and len(value) == 0:
            return "is empty; give a value"
        return None


@dataclass(frozen=True)
class ExistingPath(Bound):
    """A path that exists when the run starts (a file to read, not one to write); ``missing``
    says so when it does not, and what to pass instead."""

    missing: str = "no such file or directory"

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        if not value:
            return "is empty; give a path"
        if not Path(value).expanduser().exists():
            return self.missing
        return None


PositiveInt = Annotated[int, Range(gt=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
#: a probability, a dropout rate, a share: 0 to 1, both included
Probability = Annotated[float, Range(ge=0, le=1)]
#: a share that keeps something: above 0, up to 1
Fraction = Annotated[float, Range(gt=0, le=1)]
#: what numpy and scikit-learn accept as a seed
Seed = Annotated[int, Range(ge=0, lt=2**32)]
NonEmptyStr = Annotated[str, NonEmpty()]


# ----------------------------------------------------------------------- checking
def _fits(value: Any, ann: Any) -> bool:
    """Whether ``value`` is plainly of type ``ann`` (True when that cannot be told): which
    member of a union the value is, so that its bound applies."""
    if typing.get_origin(ann) is Annotated:
        return _fits(value, typing.get_args(ann)[0])
    if ann is None or ann is type(None):
        return value is None
    if ann is float:
        return _number(value)
    if ann is int:
        return _number(value) and isinstance(value, int)
    if ann in (str, bool):
        return isinstance(value, ann)
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if origin in (list, tuple, abc.Sequence) or ann in (list, tuple, abc.Sequence):
        return isinstance(value, list | tuple)
    if origin in (dict, abc.Mapping) or ann in (dict, abc.Mapping):
        return isinstance(value, Mapping)
    return True


def violation(value: Any, ann: Any) -> str | None:
    """How ``value`` breaks a bound in the annotation ``ann`` (items of a list included), or
    None. Types are not checked here (:mod:`ptft.config.validate` does)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        for meta in args[1:]:
            if isinstance(meta, Bound) and (problem := meta.problem(value)):
                return problem
        return violation(value, args[0])
    if origin in (typing.Union, types.UnionType):
        fitting = [a for a in args if _fits(value, a)]
        problems = [violation(value, a) for a in fitting]
        if not fitting or any(p is None for p in problems):
            return None
        return problems[0]
    if isinstance(value, list | tuple) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            pairs = list(zip(value, args, strict=False))
        else:
            pairs = [(item, args[0]) for item in value]
        for i, (item, item_ann) in enumerate(pairs):
            if problem := violation(item, item_ann):
                return f"item {i} ({_show(item)}) {problem}"
    return None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return "''"
    return str(value)


@functools.cache
def annotations(fn: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of ``fn`` with their bounds (``Annotated`` kept)."""
    return typing.get_type_hints(fn, include_extras=True)


def check_arguments(fn: Callable[..., Any], prefix: str, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError`, naming ``prefix.name``, for the first of ``arguments`` (a
    constructor's ``locals()``) outside the bound its annotation in ``fn`` declares."""
    for name, ann in annotations(fn).items():
        if name in arguments and (problem := violation(arguments[name], ann)):
            raise ConfigError(f"{prefix}.{name}={_show(arguments[name])}: {problem}")
