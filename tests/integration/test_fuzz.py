"""Fuzz: random bad overrides for every entry point and config group, each refused in one line.

A fixed number of draws with a fixed seed (the same cases every run): for ``ptft-train``,
``ptft-eval``, ``ptft-generate`` and ``ptft-pipeline``, and the groups ``data``, ``model``,
``model.backbone``, ``model.optimizer``, ``model.scheduler``, ``trainer``, ``callbacks``,
``logger``, ``paths`` (and each entry point's own settings), a key and a bad value of one kind:
a wrong type, a number out of range, an unknown key, an empty string, a path that does not
exist. What makes a value bad is said here, from the value the config or the code gives the
key (its type; a count or size is not negative; a share is not above 1; a path the run reads
exists), not from ptft's checks. For each draw: the exit status is not 0, stderr holds one
line naming the key and no traceback, nothing builds a model, a datamodule or a trainer, and
nothing is written under ``outputs/``.

The draws run in-process through each entry point's ``main`` (the check before the run, as
the console script runs it), with Hydra's run replaced by a marker that fails the draw: no
bad value may get as far as a run. One draw per entry point also runs as a real command.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import random
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ptft.cli import config_dir
from ptft.config.targets import locate
from ptft.config.validate import SUPPLIED, signature
from tests.helpers import run_cli

SEED = 1010
#: draws per entry point: fixed, so every run checks the same cases in about the same time
DRAWS = {"train": 36, "eval": 10, "generate": 8, "pipeline": 10}
#: a checkpoint path the draws give eval and generate (the checks before the run only ask that
#: it exists; what it holds is read when the run starts)
CKPT = "model.ckpt"
#: each entry point's command lines that a draw adds one override to
BASES: dict[str, list[list[str]]] = {
    "train": [[], ["experiment=digits_classifier"], ["experiment=pydoc_gpt"]],
    "eval": [[f"ckpt_path={CKPT}", "data=digits", "logger=csv"]],
    "generate": [[f"ckpt_path={CKPT}", "prompt=x"]],
    # the one-arm form: a draw for pretrain.overrides replaces its one pretraining run
    "pipeline": [
        [
            "tasks.digits.methods=[scratch,finetune]",
            "tasks.digits.label_fractions=[0.1]",
            "pretrain.arms=null",
        ]
    ],
}
#: the config groups each entry point is fuzzed in ("" is its own top-level settings); the
#: pipeline's ``pretrain.overrides`` takes a ``ptft-train`` draw inside its list
GROUPS: dict[str, tuple[str, ...]] = {
    "train": (
        "",
        "data",
        "model",
        "model.backbone",
        "model.optimizer",
        "model.scheduler",
        "trainer",
        "callbacks",
        "logger",
        "paths",
    ),
    "eval": ("", "data", "trainer", "logger", "paths"),
    "generate": ("", "paths"),
    "pipeline": ("", "tasks.digits", "paths", "pretrain.overrides"),
}
#: keys that name a file or folder the run reads: it must exist
READ_PATHS = {"ckpt_path", "pretrained", "model.pretrained", "data.tokenizer"}
#: keys where an empty string means something (a prompt: an unconditioned sample); a library's
#: arguments are not drawn empty either: the library says what its empty strings mean
#: (Lightning's logger name and version: no subfolder)
EMPTY_MEANS_SOMETHING = {"prompt"}
#: a key for a share or a probability: above 1 is out of range
SHARE = re.compile(r"(fraction|dropout|smoothing|prob|(^|_)p|cut_frac|min_factor|translate)$")
#: a key for a size or a count of things that there is at least one of: 0 is out of range
SIZE = re.compile(
    r"batch_size|block_size|max_length|vocab_size|(^|_)dims?$|num_(layers|heads|classes|"
    r"samples|nodes)|max_positions|channels|^seeds$|^k$|unfreeze_epochs"
)
#: SimCLR's temperature divides the similarities (generate's may be 0: greedy decoding)
POSITIVE = {"model.temperature"}


class Case(NamedTuple):
    """One draw: the command, its arguments, and the key the message must name."""

    command: str
    argv: list[str]
    key: str
    kind: str


class Candidate(NamedTuple):
    key: str
    override: str  # key=value as given on the command line
    kind: str


# ------------------------------------------------------------------- what is bad where
def _plain_type(ann: Any) -> Any:
    """``int`` for ``Annotated[int, ...] | None``: the type a value must have, or None when
    any goes (``Any``, no annotation, a union of several)."""
    if typing.get_origin(ann) is typing.Annotated:
        return _plain_type(typing.get_args(ann)[0])
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        return _plain_type(members[0]) if len(members) == 1 else None
    if ann in (Any, inspect.Parameter.empty, object):
        return None
    return ann


def _kind_of(ann: Any) -> str | None:
    plain = _plain_type(ann)
    origin = typing.get_origin(plain)
    if plain in (bool, int, float, str):
        return plain.__name__
    if origin is typing.Literal:
        return "literal"
    if origin in (list, tuple, Sequence, typing.Sequence) or plain in (list, tuple):
        return "list"
    if typing.is_typeddict(plain) or origin in (dict, Mapping) or plain in (dict, Mapping):
        return "mapping"
    return None


def _override(key: str, value: Any) -> str:
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={json.dumps(value).replace(' ', '')}"


def candidates_for(key: str, ann: Any, reference: Any, library: bool) -> list[Candidate]:
    """The bad overrides of one key whose annotation is ``ann`` and whose value (from the
    config, or the code's default) is ``reference``; ``library``: a third party's argument."""
    kind = _kind_of(ann)
    name = key.rpartition(".")[2]
    out = []
    wrong = {
        "bool": ["maybe"],
        "int": ["abc", "1.5", "[1]"],
        "float": ["abc", "[0.5]"],
        "str": ["[1,2]"],
        "literal": ["[1]", "nosuch"],
        "list": ["abc"],
        "mapping": ["abc", "5"],
    }.get(kind or "", [])
    out += [Candidate(key, f"{key}={v}", "wrong type") for v in wrong]
    if kind in ("int", "float"):
        out.append(Candidate(key, f"{key}=-7", "out of range"))
        if SHARE.search(name):
            out.append(Candidate(key, f"{key}=7", "out of range"))
        if SIZE.search(name) or key in POSITIVE:
            out.append(Candidate(key, f"{key}=0", "out of range"))
    if kind == "list" and isinstance(reference, list | tuple) and reference:
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in reference):
            out.append(Candidate(key, _override(key, [*reference[:-1], -7]), "out of range"))
    if kind == "str" and not library and name not in EMPTY_MEANS_SOMETHING:
        out.append(Candidate(key, f"{key}=", "empty string"))
    if key in READ_PATHS or (name in READ_PATHS and not library):
        out.append(Candidate(key, f"{key}=no/such/file.ckpt", "missing path"))
    return out


def _unknown(group: str, rng: random.Random) -> Candidate:
    word = "zz" + "".join(rng.choice("abcdefghij") for _ in range(5))
    key = f"{group}.{word}" if group else word
    return Candidate(key, f"{key}=1", "unknown key")


@cache
def _composed(command: str, base: tuple[str, ...]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=command, overrides=[*base, "paths.output_dir=out"])


def _target_candidates(node: DictConfig, path: str) -> list[Candidate]:
    """Every argument of the class a ``_target_`` node names (those the config sets and
    those it leaves to the code), but the ones ptft passes itself."""
    cls = locate(node._target_)
    sig = signature(cls)
    library = not cls.__module__.startswith("ptft.")
    out = []
    for name, param in sig.params.items():
        if name in SUPPLIED.get(path, ()) or (path == "model" and name == "input_shape"):
            continue
        if name in node and isinstance(node.get(name), DictConfig) and "_target_" in node[name]:
            continue  # a node of its own (model.backbone): fuzzed as its own group
        reference = OmegaConf.to_container(node, resolve=False).get(name, param.default)
        out += candidates_for(f"{path}.{name}", sig.hints.get(name), reference, library)
    for run_key in ("pretrained", "monitor_mode") if path == "model" else ():
        out += candidates_for(
            f"model.{run_key}", str if run_key == "pretrained" else "literal", None, False
        )
    return out


def _schema_candidates(node: DictConfig, path: str) -> list[Candidate]:
    """The settings of a typed schema (``trainer``, ``paths``, the top level)."""
    kind = OmegaConf.get_type(node)
    hints = typing.get_type_hints(kind, include_extras=True)
    out = []
    for field in dataclasses.fields(kind):
        if field.name.startswith("_") or field.name not in node:
            continue
        child = node._get_node(field.name)
        if isinstance(child, DictConfig):
            continue
        key = f"{path}.{field.name}" if path else field.name
        reference = None if OmegaConf.is_missing(node, field.name) else child._value()
        out += candidates_for(key, hints[field.name], reference, False)
    return out


@cache
def candidates(command: str, base_index: int, group: str) -> tuple[Candidate, ...]:
    """What may be drawn for ``group`` of ``command`` on its ``base_index``-th command line
    (unknown keys aside)."""
    if group == "pretrain.overrides":  # the study's pretraining run: a ptft-train draw
        return ()
    cfg = _composed(command, tuple(BASES[command][base_index]))
    node = OmegaConf.select(cfg, group) if group else cfg
    if group in ("callbacks", "logger"):
        out = []
        for name, child in node.items():
            if isinstance(child, DictConfig) and "_target_" in child:
                out += _target_candidates(child, f"{group}.{name}")
        return tuple(out)
    if "_target_" in node:
        return tuple(_target_candidates(node, group))
    return tuple(_schema_candidates(node, group))


def _closed(node_path: str, cfg: DictConfig) -> bool:
    """Whether the node takes only the keys it declares (a library's ``**kwargs`` may take
    anything: an unknown key there is the library's business)."""
    node = OmegaConf.select(cfg, node_path) if node_path else cfg
    if isinstance(node, DictConfig) and "_target_" in node:
        return not signature(locate(node._target_)).open
    return True


def draw_train(rng: random.Random, base_index: int, groups: Sequence[str]) -> tuple[str, str, str]:
    """``(override, key, kind)`` of one ``ptft-train`` draw in one of ``groups``."""
    group = rng.choice(groups)
    cfg = _composed("train", tuple(BASES["train"][base_index]))
    if rng.random() < 0.2:
        where = group
        if group in ("callbacks", "logger") and rng.random() < 0.7:
            nodes = [k for k, v in cfg[group].items() if isinstance(v, DictConfig)]
            where = f"{group}.{rng.choice(sorted(nodes))}"
        if _closed(where, cfg):
            unknown = _unknown(where, rng)
            return unknown.override, unknown.key, unknown.kind
    pick = rng.choice(candidates("train", base_index, group))
    return pick.override, pick.key, pick.kind


def draw(command: str, group: str, rng: random.Random) -> Case:
    """One draw for ``group`` of ``command``, on one of its base command lines."""
    base_index = rng.randrange(len(BASES[command]))
    base = BASES[command][base_index]
    if command == "train":
        override, key, kind = draw_train(rng, base_index, [group])
        return Case(command, [*base, override], key, kind)
    if group == "pretrain.overrides":  # the study's pretraining run, as its overrides say
        inner = [g for g in GROUPS["train"] if g not in ("", "paths")]  # the study sets those
        override, key, kind = draw_train(rng, 0, inner)
        listed = ",".join(json.dumps(o) for o in ["experiment=digits_simclr", override])
        return Case(command, [*base, f"pretrain.overrides=[{listed}]"], key, kind)
    if rng.random() < 0.2:
        unknown = _unknown(group, rng)
        return Case(command, [*base, unknown.override], unknown.key, unknown.kind)
    pick = rng.choice(candidates(command, base_index, group))
    return Case(command, [*base, pick.override], pick.key, pick.kind)


def cases() -> list[Case]:
    """The draws: each entry point's groups in turn, a random key and bad value in each."""
    rng = random.Random(SEED)
    return [
        draw(command, GROUPS[command][i % len(GROUPS[command])], rng)
        for command, n in DRAWS.items()
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- checks
class HydraStarted(Exception):
    """The check before the run let a bad value through to Hydra."""


def run_in_process(case: Case, monkeypatch, capsys) -> tuple[int | None, str]:
    monkeypatch.setattr(sys, "argv", [f"ptft-{case.command}", *case.argv])
    capsys.readouterr()
    try:
        importlib.import_module(f"ptft.{case.command}").main()
    except SystemExit as exit_:
        return exit_.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def refused_in_one_line(case: Case, status: int | None, err: str) -> str | None:
    """What is wrong with how ``case`` was refused (None: nothing)."""
    lines = err.strip().splitlines()
    if status in (0, None):
        return f"exit status {status}"
    if "Traceback" in err:
        return "a traceback"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"not one line 'error: ...': {err!r}"
    if case.key not in lines[0]:
        return f"the message does not name {case.key}: {lines[0]}"
    return None


def claims_success(root: Path) -> list[str]:
    """Files under ``root/outputs`` that only a run that worked writes."""
    outputs = root / "outputs"
    names = ("*.ckpt", "metrics.json", "results.csv", "generations.jsonl", "sweep_summary.csv")
    return sorted(str(p) for pattern in names for p in outputs.rglob(pattern))


def test_the_draws_are_fixed_and_cover_every_entry_point_and_group():
    drawn = cases()
    assert drawn == cases()  # seeded: the same cases every run
    assert {c.command for c in drawn} == set(DRAWS)
    assert len(drawn) == sum(DRAWS.values())
    kinds = {c.kind for c in drawn}
    assert kinds == {"wrong type", "out of range", "unknown key", "empty string", "missing path"}
    train_groups = {
        g for c in drawn if c.command == "train" for g in GROUPS["train"][1:] if c.key.startswith(g)
    }
    assert train_groups == set(GROUPS["train"][1:])


def test_every_bad_override_is_refused_in_one_line_before_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / CKPT).write_bytes(b"read only when the run starts")

    def hydra_run(**kwargs):
        raise HydraStarted(kwargs["args"].overrides)

    monkeypatch.setattr(sys.modules["hydra.main"], "_run_hydra", hydra_run)
    # the check before a run reads no data and builds nothing: each builder fails the draw
    built: list[str] = []

    def builder(name: str):
        def build(*args, **kwargs):
            built.append(name)
            raise HydraStarted(name)

        return build

    import ptft.runs.build
    import ptft.runs.fit
    import ptft.study.runner

    for module in (ptft.runs.build, ptft.runs.fit, ptft.study.runner):
        for name in ("build_model", "build_datamodule", "build_trainer", "train"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, builder(f"{module.__name__}.{name}"))
    failures = []
    for case in cases():
        built.clear()
        try:
            status, err = run_in_process(case, monkeypatch, capsys)
        except HydraStarted as reached:
            failures.append(f"{case}: reached {reached}")
            continue
        problem = refused_in_one_line(case, status, err)
        if problem is None and built:
            problem = f"built {built} before refusing"
        if problem:
            failures.append(f"{case}: {problem}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def test_one_draw_per_entry_point_as_a_real_command(tmp_path):
    (tmp_path / CKPT).write_bytes(b"read only when the run starts")
    firsts = {}
    for case in cases():  # the first draw in a group (the checks that import torch)
        if "." in case.key:
            firsts.setdefault(case.command, case)
    # and a multirun whose second job does not compose: Hydra's own error, status 2 too
    sweep = Case("train", ["-m", "trainer.max_epochs=abc,1"], "trainer.max_epochs", "wrong type")
    for case in [*firsts.values(), sweep]:
        result = run_cli([f"ptft.{case.command}", *case.argv], cwd=tmp_path)
        assert result.returncode == 2, (case, result.stderr[-2000:])
        assert refused_in_one_line(case, result.returncode, result.stderr) is None, (
            case,
            result.stderr[-2000:],
        )
    assert claims_success(tmp_path) == []
