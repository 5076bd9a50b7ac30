"""A checkpoint someone sent runs no code (SECURITY.md): crafted checkpoints, built from a real
2-step run with callable names in every field ptft reads (and nested ``_target_``s, and pickle
payloads), go through ``ptft-eval``, ``ptft-generate``, ``model.pretrained=`` and ``ckpt_path=``
resume. Every one is refused with one line naming the field, nothing is called (the marker
file the payload would write never appears), and a user's own classes still work where their
config names them."""

from __future__ import annotations

import ast
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import ptft
from ptft.errors import ConfigError
from ptft.evaluation.report import evaluate
from ptft.nn.backbone import Backbone
from ptft.runs.build import build_model, plain
from ptft.runs.fit import train
from ptft.runs.generate import generate_text
from ptft.runs.load import load_run
from ptft.tasks.classifier import Classifier
from tests.helpers import QUIET, compose_train, run_cli

EVAL_QUIET = QUIET[2:]  # ptft-eval has no callbacks group
HERE = __name__  # tests.integration.test_security: the user's own code in these tests

#: names of code a crafted file asks ptft to call
CALLABLES = [
    "os.system",
    "builtins.exec",
    "subprocess.call",
    "ptft.runs.fit.train",
    "torch.nn.Linear",
]


def arguments(name: str, marker: Path) -> dict[str, Any]:
    """Keyword arguments with which ``name`` would write ``marker``, if it were ever called."""
    return {
        "os.system": {"command": f"touch '{marker}'"},
        "builtins.exec": {"source": f"open({str(marker)!r}, 'w')"},
        "subprocess.call": {"args": ["touch", str(marker)]},
    }.get(name, {})


class Payload:
    """Unpickling this writes the marker file (a pickle that runs code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return open, (self.marker, "w")


class TinyNet(Backbone):
    """A user's own backbone, defined outside ptft."""

    def __init__(self, input_shape: tuple[int, ...], width: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), width)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))

    def layer_groups(self) -> list[nn.Module]:
        return [self.fc]


class OwnClassifier(Classifier):
    """A user's own task, defined outside ptft."""


# ------------------------------------------------------------------------------ fixtures
def tiny_run(out: Path, *overrides: str) -> Path:
    """``last.ckpt`` of a 2-step digits classifier trained in ``out``."""
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "trainer.max_steps=2",
            "logger=none",
            "test=false",
            *QUIET,
            *overrides,
        ],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    """A real ptft checkpoint, the base of every crafted one."""
    return tiny_run(tmp_path_factory.mktemp("victim"))


def craft(source: Path, dest: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, dest)
    return dest


def set_module(name: str, marker: Path) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        ckpt["ptft_backbone"]["module"] = name
        ckpt["hyper_parameters"] = arguments(name, marker)  # what the call would be given

    return edit


def set_backbone(name: str, marker: Path) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        config = {"_target_": name, **arguments(name, marker)}
        ckpt["ptft_backbone"]["config"] = config
        ckpt["hyper_parameters"]["backbone"] = dict(config)

    return edit


def set_node(key: str, name: str, marker: Path) -> Callable[[dict], None]:
    """``hyper_parameters.<key>._target_`` (optimizer, scheduler) or ``ptft_run.data._target_``."""

    def edit(ckpt: dict) -> None:
        tree = ckpt["ptft_run"] if key == "data" else ckpt["hyper_parameters"]
        tree[key] = {**tree[key], "_target_": name, **arguments(name, marker)}

    return edit


def nested(path: str, marker: Path) -> Callable[[dict], None]:
    """A nested node ``{_target_: os.system, command: touch marker}`` at the dotted ``path``
    (its first part: ``hyper_parameters`` or ``ptft_run``), which Hydra would instantiate."""

    def edit(ckpt: dict) -> None:
        *parents, last = path.split(".")
        node = ckpt
        for part in parents:  # copied: the record and the hyper-parameters share dicts
            node[part] = dict(node[part])
            node = node[part]
        node[last] = {"_target_": "os.system", **arguments("os.system", marker)}
        if parents[:2] == ["hyper_parameters", "backbone"]:  # the handoff reads the record's copy
            ckpt["ptft_backbone"]["config"][last] = node[last]

    return edit


def pickled(marker: Path) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        ckpt["ptft_extra"] = Payload(marker)

    return edit


# ----------------------------------------------------------------------------- entry points
def eval_entry(ckpt: Path, out: Path, *overrides: str) -> Any:
    cfg = compose_train([f"ckpt_path={ckpt}", *EVAL_QUIET, *overrides], out, config_name="eval")
    return evaluate(cfg)


def generate_entry(ckpt: Path, out: Path) -> Any:
    cfg = compose_train([f"ckpt_path={ckpt}", "prompt=x"], out, config_name="generate")
    return generate_text(cfg)


def handoff_entry(ckpt: Path, out: Path, *overrides: str) -> Any:
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            f"model.pretrained={ckpt}",
            "logger=none",
            *QUIET,
            *overrides,
        ],
        out,
    )
    return train(cfg)


def resume_entry(ckpt: Path, out: Path, *overrides: str) -> Any:
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            f"ckpt_path={ckpt}",
            "trainer.max_steps=4",
            "logger=none",
            "test=false",
            *QUIET,
            *overrides,
        ],
        out,
    )
    return train(cfg)


ENTRIES = {
    "eval": eval_entry,
    "generate": generate_entry,
    "handoff": handoff_entry,
    "resume": resume_entry,
}


def assert_refused(entry: str, ckpt: Path, tmp_path: Path, marker: Path, *expected: str) -> str:
    """``entry`` refuses ``ckpt`` with one line holding each of ``expected``, and calls nothing."""
    out = tmp_path / f"out_{entry}"
    with pytest.raises(ConfigError) as info:
        ENTRIES[entry](ckpt, out)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert not (out / "checkpoints").exists()  # nothing was trained
    return message


# ----------------------------------------------------------------------------- the tests
FIELDS = {
    # field ptft reads: (edit, the entry points that read it, the field named in the error)
    "module": (set_module, ("eval", "generate", "resume"), "ptft_backbone.module"),
    "backbone": (set_backbone, ("eval", "generate"), "hyper_parameters.backbone._target_"),
    "pretrained": (set_backbone, ("handoff",), "ptft_backbone.config._target_"),
    "optimizer": (
        lambda n, m: set_node("optimizer", n, m),
        ("eval", "generate"),
        "hyper_parameters.optimizer._target_",
    ),
    "scheduler": (
        lambda n, m: set_node("scheduler", n, m),
        ("eval", "generate"),
        "hyper_parameters.scheduler._target_",
    ),
    "data": (lambda n, m: set_node("data", n, m), ("eval",), "ptft_run.data._target_"),
}


@pytest.mark.parametrize("name", CALLABLES)
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_callable_name_in_any_field_is_refused(victim, tmp_path, field, name):
    marker = tmp_path / "PWNED"
    make, entries, named = FIELDS[field]
    ckpt = craft(victim, tmp_path / "crafted.ckpt", make(name, marker))
    for entry in entries:
        message = assert_refused(entry, ckpt, tmp_path, marker, f"{named}={name}")
        assert message.startswith(("ckpt_path=", "model.pretrained="))


NESTED = {
    "hyper_parameters.backbone.init": ("eval", "generate"),
    "hyper_parameters.optimizer.betas": ("eval", "generate"),
    "hyper_parameters.scheduler.warmup": ("eval", "generate"),
    "hyper_parameters.augment.transform": ("eval", "generate"),
    "ptft_run.data.transform": ("eval",),
    "ptft_run.model.optimizer.betas": ("eval",),
}


@pytest.mark.parametrize("path", sorted(NESTED))
def test_a_nested_target_is_never_instantiated(victim, tmp_path, path):
    marker = tmp_path / "PWNED"
    ckpt = craft(victim, tmp_path / "nested.ckpt", nested(path, marker))
    for entry in NESTED[path]:
        assert_refused(entry, ckpt, tmp_path, marker, f"{path}._target_='os.system'", "nested")
    if path.startswith("hyper_parameters.backbone"):  # the handoff reads the backbone record
        field = "ptft_backbone.config." + path.rpartition(".")[2]
        assert_refused("handoff", ckpt, tmp_path, marker, f"{field}._target_='os.system'")


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_a_pickle_payload_is_refused(victim, tmp_path, entry):
    marker = tmp_path / "PWNED"
    ckpt = craft(victim, tmp_path / "payload.ckpt", pickled(marker))
    assert_refused(
        entry,
        ckpt,
        tmp_path,
        marker,
        "is not a loadable PyTorch checkpoint",
        "(it names io.open)",
        "does not unpickle",
    )


def bad_files(victim: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that cannot be resumed from, and the words their error says."""
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    truncated = tmp_path / "truncated.ckpt"
    data = victim.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    other = craft(
        victim,
        tmp_path / "simclr.ckpt",
        lambda c: c["ptft_backbone"].update(module="ptft.objectives.simclr.SimCLR"),
    )

    def drop_head(ckpt: dict) -> None:
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "head" not in k}
        del ckpt["ptft_backbone"]  # not even the class to tell: the weights must say it

    headless = craft(victim, tmp_path / "headless.ckpt", drop_head)
    return {
        "text": (text, "is not a loadable PyTorch checkpoint: a text file"),
        "empty": (empty, "is not a loadable PyTorch checkpoint (an empty file)"),
        "truncated": (truncated, "the file is truncated or damaged"),
        "another model": (
            other,
            "ptft_backbone.module=ptft.objectives.simclr.SimCLR is not this run's model "
            "ptft.tasks.classifier.Classifier",
        ),
        "other weights": (headless, "does not fit this run's model (absent from the checkpoint:"),
    }


def test_resume_errors_are_one_line(victim, tmp_path):
    marker = tmp_path / "PWNED"
    files = bad_files(victim, tmp_path)
    for ckpt, words in files.values():
        assert_refused("resume", ckpt, tmp_path, marker, f"ckpt_path={ckpt}", words)
    for entry in ("eval", "generate"):  # the same files, where a run is rebuilt from them
        for kind in ("text", "empty", "truncated"):
            ckpt, words = files[kind]
            assert_refused(entry, ckpt, tmp_path, marker, f"ckpt_path={ckpt}", words)


def test_resume_reads_the_checkpoint_weights_only(victim, tmp_path):
    # Lightning 2.6 defaults to weights_only=False (with a warning) unless told
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume_entry(victim, tmp_path)
    assert not [w for w in caught if "weights_only" in str(w.message)]
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4  # two more steps after the checkpoint's two


def test_no_torch_load_without_weights_only():
    """Every ``torch.load`` in ptft, and every Trainer call given a ``ckpt_path``, passes
    ``weights_only=True`` (read from the source)."""
    src = Path(ptft.__file__).parent
    found, unsafe = 0, []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                # a bare load() would escape the check below
                if any(alias.name == "load" for alias in node.names):
                    unsafe.append(f"{path.relative_to(src)}:{node.lineno} imports torch's load")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            is_load = node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch"
            if not (is_load or "ckpt_path" in keywords):
                continue
            found += 1
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                unsafe.append(f"{path.relative_to(src)}:{node.lineno}")
    assert found >= 3  # ptft.checkpoints' read, fit's trainer.fit and trainer.test
    assert not unsafe, f"torch.load / ckpt_path without weights_only=True: {unsafe}"


# ------------------------------------------------------------------------ the command lines
def assert_one_line(result, *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    last = lines[0]
    assert last.startswith("error: ")
    for part in expected:
        assert part in last, f"{part!r} not in {last!r}"


def test_command_lines_refuse_in_one_line(victim, tmp_path):
    marker = tmp_path / "PWNED"
    module = craft(victim, tmp_path / "module.ckpt", set_module("os.system", marker))
    payload = craft(victim, tmp_path / "payload.ckpt", pickled(marker))
    backbone = craft(victim, tmp_path / "backbone.ckpt", set_backbone("subprocess.call", marker))
    train = ["ptft.train", "experiment=digits_classifier", "logger=none", "trainer.accelerator=cpu"]
    runs = [
        (["ptft.eval", f"ckpt_path={module}"], "ptft_backbone.module=os.system is refused"),
        (["ptft.generate", f"ckpt_path={payload}", "prompt=x"], "(it names io.open)"),
        (
            [*train, f"model.pretrained={backbone}"],
            "ptft_backbone.config._target_=subprocess.call is refused",
        ),
        ([*train, f"ckpt_path={payload}"], "does not unpickle"),
    ]
    for args, words in runs:
        assert_one_line(run_cli(args, cwd=tmp_path), words)
        assert not marker.exists()


# ----------------------------------------------------------------------- the user's own code
def test_own_backbone_hands_off_where_the_config_names_it(tmp_path):
    own = f"{HERE}.TinyNet"
    ckpt = tiny_run(tmp_path / "tiny", f"model.backbone._target_={own}", "model.backbone.width=12")
    # named by the fine-tuning config: handed off, architecture and weights
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            f"model.pretrained={ckpt}",
            f"model.backbone._target_={own}",
            "logger=none",
            *QUIET,
        ],
        tmp_path / "finetune",
    )
    model = build_model(plain(cfg.model))
    assert isinstance(model.backbone, TinyNet) and model.backbone.out_dim == 12
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(model.backbone.fc.weight, saved["backbone.fc.weight"])
    # not named (the default backbone is ptft's CNN): refused, saying how to allow it
    marker = tmp_path / "PWNED"
    message = assert_refused(
        "handoff", ckpt, tmp_path, marker, f"ptft_backbone.config._target_={own} is refused"
    )
    assert "model.backbone._target_" in message
    # ptft-eval rebuilds it when its config names the class too
    with pytest.raises(ConfigError, match=f"hyper_parameters.backbone._target_={own}"):
        load_run(ckpt)
    module, _ = load_run(ckpt, model={"backbone": {"_target_": own}})
    assert isinstance(module.backbone, TinyNet)


def test_own_task_is_rebuilt_where_the_config_names_it(victim, tmp_path):
    own = f"{HERE}.OwnClassifier"
    ckpt = craft(victim, tmp_path / "own.ckpt", lambda c: c["ptft_backbone"].update(module=own))
    marker = tmp_path / "PWNED"
    assert_refused("eval", ckpt, tmp_path, marker, f"ptft_backbone.module={own} is refused")
    metrics = eval_entry(ckpt, tmp_path / "eval", f"model._target_={own}")
    assert "test/acc" in metrics
    module, _ = load_run(ckpt, model={"_target_": own})
    assert type(module) is OwnClassifier
    state = torch.load(victim, weights_only=True)["state_dict"]
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_ptft_checkpoints_still_load(victim, tmp_path):
    # the rules let every name a ptft run writes through
    module, record = load_run(victim)
    assert type(module) is Classifier
    assert record["data"]["_target_"] == "ptft.data.digits.DigitsDataModule"
    assert not os.path.exists(tmp_path / "PWNED")
