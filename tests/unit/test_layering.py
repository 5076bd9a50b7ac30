"""The layering rule, read from the imports of every module under ``src/ptft``, and no
import-time side effects outside the entry points.

Lower layers never import higher ones: ``nn`` (the network library) imports no module,
objective, task, callback, monitor or run code; ``modules``, ``objectives`` and ``tasks``
import no callback and nothing of the run layer (``runs``, ``sweeps``, ``study``,
``evaluation``); ``monitors`` import no model code, callback or run code. Imports inside
functions count too. An import under ``if TYPE_CHECKING:`` never runs, and is allowed only
where :data:`TYPE_CHECKING_ALLOWED` says so.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ptft

SRC = Path(ptft.__file__).resolve().parent

RUN_LAYER = ("runs", "sweeps", "study", "evaluation")
MODEL_CODE = ("modules", "objectives", "tasks")

#: package -> the ptft packages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "nn": (*MODEL_CODE, "callbacks", *RUN_LAYER, "monitors"),
    **{package: ("callbacks", *RUN_LAYER) for package in MODEL_CODE},
    "monitors": (*MODEL_CODE, "callbacks", *RUN_LAYER),
}

#: (importing module, imported module) pairs allowed under ``if TYPE_CHECKING:`` (annotations only)
TYPE_CHECKING_ALLOWED = {
    ("ptft.nn.decoding", "ptft.modules.language_model"),
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = ("ptft", *path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, src: Path = SRC) -> list[tuple[str, bool, int]]:
    """``(imported module, under TYPE_CHECKING, line)`` for every import in the file, relative
    imports resolved; ``from a import b`` yields ``a.b`` (``b`` may be a module)."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, type_checking, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.extend((f"{base}.{a.name}", type_checking, node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def violations(path: Path, src: Path = SRC) -> list[str]:
    name = module_name(path, src)
    parts = name.split(".")
    forbidden = FORBIDDEN.get(parts[1]) if len(parts) > 1 else None
    if not forbidden:
        return []
    out = []
    for target, type_checking, line in imports(path, src):
        layer = target.split(".")
        if layer[0] != "ptft" or len(layer) < 2 or layer[1] not in forbidden:
            continue
        if type_checking and any(
            mod == name and (target == allowed or target.startswith(allowed + "."))
            for mod, allowed in TYPE_CHECKING_ALLOWED
        ):
            continue
        out.append(f"{path.relative_to(src.parent)}:{line}: {name} imports {target}")
    return out


def test_the_rule_sees_relative_and_nested_imports(tmp_path):
    # the checker itself: a relative import inside a function, and one under TYPE_CHECKING
    package = tmp_path / "ptft" / "nn"
    package.mkdir(parents=True)
    (package / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..tasks import classifier\n"
        "def f():\n    from ..callbacks.unfreeze import x\n"
    )
    found = violations(package / "bad.py", tmp_path / "ptft")
    assert [v.split(": ", 1)[1] for v in found] == [
        "ptft.nn.bad imports ptft.tasks.classifier",
        "ptft.nn.bad imports ptft.callbacks.unfreeze.x",
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_import_no_higher_ones(package):
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no modules under ptft/{package}"
    found = [v for path in files for v in violations(path)]
    assert not found, "layering rule broken:\n" + "\n".join(found)


# Run in a fresh interpreter with ``src/ptft`` as argv[1]: import ptft's dependencies (what its
# modules import at module level), snapshot the process-wide state, import every ptft module
# but the entry points, and print what changed.
SIDE_EFFECTS_PROBE = r"""
import ast, importlib, json, logging, os, pathlib, sys, warnings

src = pathlib.Path(sys.argv[1])
ENTRY = {"ptft.train", "ptft.eval", "ptft.generate", "ptft.export", "ptft.pipeline"}

def name_of(path):
    parts = ("ptft", *path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

names = map(name_of, src.rglob("*.py"))
modules = sorted(n for n in names if n not in ENTRY and not n.startswith("ptft.conf"))
third = set()
for path in src.rglob("*.py"):
    for node in ast.parse(path.read_text()).body:  # module level: what importing runs
        if isinstance(node, ast.Import):
            third.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            third.add(node.module)
            third.update(f"{node.module}.{a.name}" for a in node.names)
for name in sorted(n for n in third if not n.startswith("ptft")):
    try:
        importlib.import_module(name)
    except Exception:
        pass

def snapshot():
    import torch
    from omegaconf.basecontainer import BaseContainer
    known = logging.root.manager.loggerDict.items()
    loggers = {"": logging.getLogger()}
    loggers.update((n, lg) for n, lg in known if isinstance(lg, logging.Logger))
    state = {
        "warnings.filters": [repr(f) for f in warnings.filters],
        "os.environ": dict(os.environ),
        "torch": [
            torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
            torch.get_num_threads(), str(torch.get_default_dtype()), torch.backends.cudnn.benchmark,
        ],
        "omegaconf resolvers": sorted(BaseContainer._resolvers),
    }
    for n, lg in loggers.items():
        handlers, filters = [repr(h) for h in lg.handlers], [repr(f) for f in lg.filters]
        state[f"logger {n!r}"] = [handlers, lg.level, lg.propagate, filters]
    return state

before = snapshot()
for name in modules:
    importlib.import_module(name)
after = snapshot()
new_logger = [[], logging.NOTSET, True, []]
changes = [k for k in after if after[k] != before.get(k, new_logger if k[:6] == "logger" else None)]
print(json.dumps({"modules": len(modules), "changed": changes}))
"""


@pytest.mark.slow  # a fresh interpreter imports torch, Lightning and all of ptft
def test_importing_ptft_changes_no_global_state():
    # logging configuration, warning filters, environment variables, torch settings and
    # OmegaConf resolvers are set by the entry points (ptft.runs.console, ptft.config.register)
    result = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS_PROBE, str(SRC)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] > 50
    assert report["changed"] == [], f"importing ptft changed {report['changed']}"
