"""Every command in README.md and docs/ runs as written, and every reference in them exists.

* Each ``ptft-train``, ``ptft-eval``, ``ptft-generate`` or ``ptft-pipeline`` command (or
  ``python -m ptft.<entry point>``) in a shell code block is composed with Hydra's compose API
  against its entry point's config, with its overrides as the shell would pass them
  (placeholders such as ``<ts>`` become a dummy path; a ``-m`` sweep is composed at every
  point of its grid), and validated as the entry point validates it. A ``ptft-pipeline``
  command also composes every run of its study and its pretraining stage.
* Every relative link (and its ``#anchor``) points to an existing file and heading; every
  repository path and every ``ptft.…`` name written in a code span exists; Python and
  YAML code blocks parse.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from ptft.cli import config_dir, missing_plugin
from ptft.config.targets import locate

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
#: the pages whose commands must run as written
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: pages whose links, paths and names must exist (the benchmarks' own page too)
REFERENCING = [*PAGES, ROOT / "bench" / "README.md"]

#: entry point → its config (``conf/<name>.yaml``)
ENTRY_POINTS = {
    "ptft-train": "train",
    "ptft-eval": "eval",
    "ptft-generate": "generate",
    "ptft-pipeline": "pipeline",
    "ptft-export": "export",
    **{f"ptft.{name}": name for name in ("train", "eval", "generate", "export", "pipeline")},
}
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
#: ``<ts>``, ``<run>``, ``<run dir>``: whatever the reader fills in
PLACEHOLDER = re.compile(r"<[A-Za-z][\w .-]*>")
#: what a placeholder becomes: a path, which every placeholder in a command stands for
DUMMY = "placeholder"
#: command-line flags that are not overrides (``--cfg job`` prints the config instead of running)
FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--run", "-r"}
#: paths the pages name as examples of what a contributor would add
EXAMPLE_PATHS = {"src/ptft/objectives/rotation.py", "conf/model/rotation.yaml"}
#: the packaged config directory, which is conf/ in a checkout
VIRTUAL_PACKAGES = {"ptft.conf"}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    config: str  # train | eval | generate | pipeline
    overrides: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


# -- reading the pages ------------------------------------------------------------------------
def code_blocks(text: str) -> Iterator[tuple[str, str, int]]:
    """``(language, body, line of the opening fence)`` of every fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, marker, language = i, fence.group(2), fence.group(3).lower()
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append(lines[i])
            i += 1
        i += 1
        yield language, "\n".join(body), start + 1


def prose(text: str) -> str:
    """The page without its fenced code blocks (blank lines in their place)."""
    out, inside, marker = [], False, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*(```+|~~~+)", line)
        if fence and (not inside or line.strip().startswith(marker)):
            inside, marker = (not inside), fence.group(1)
            out.append("")
        else:
            out.append("" if inside else line)
    return "\n".join(out)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(text))


def shell_words(line: str) -> list[str]:
    """The words the shell passes on, with ``&&``, ``||``, ``;`` and ``|`` as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def page_commands(page: Path) -> list[Command]:
    found = []
    for language, body, start in code_blocks(page.read_text()):
        if language not in SHELL_BLOCKS:
            continue
        logical, first = "", None
        for offset, raw in enumerate(body.splitlines()):
            first = start + 1 + offset if first is None else first
            if raw.rstrip().endswith("\\"):
                logical += raw.rstrip()[:-1] + " "
                continue
            logical += raw
            found += line_commands(page, first, logical)
            logical, first = "", None
    return found


def line_commands(page: Path, line: int, text: str) -> list[Command]:
    words = shell_words(PLACEHOLDER.sub(DUMMY, text))
    segments: list[list[str]] = [[]]
    for word in words:
        if word in {"&&", "||", ";", "|", "&"}:
            segments.append([])
        else:
            segments[-1].append(word)
    commands = []
    for words in segments:
        if words[:2] == ["python", "-m"] and len(words) > 2:
            words = words[2:]
        if not words or words[0] not in ENTRY_POINTS:
            continue
        overrides, args = [], iter(words[1:])
        for arg in args:
            if arg in FLAGS_WITH_VALUE:
                next(args, None)
            elif arg not in FLAGS and not arg.startswith("--"):
                overrides.append(arg)
        shown = " ".join(text.split("#")[0].split())
        commands.append(
            Command(
                page.relative_to(ROOT).as_posix(),
                line,
                ENTRY_POINTS[words[0]],
                tuple(overrides),
                shown,
            )
        )
    return commands


COMMANDS = [c for page in PAGES for c in page_commands(page)]


def grid(overrides: tuple[str, ...]) -> list[list[str]]:
    """Every point of a ``-m`` sweep (``a=1,2 b=x,y``: four), or the overrides as they are."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    axes = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            prefix = override.get_key_element()
            axes.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([text])
    return [list(point) for point in itertools.product(*axes)]


# -- composing --------------------------------------------------------------------------------
#: what each entry point checks before it runs (``@validated`` in ptft/train.py, eval.py,
#: generate.py, pipeline.py; a multirun's jobs check themselves the same way as they start)
CHECKS = {
    "train": "ptft.config.validate.validate",
    "eval": "ptft.config.validate.validate",
    "generate": "ptft.generate.check",
    "export": "ptft.export.check",
    # the study composes and validates every run it will make, pretraining included
    "pipeline": "ptft.study.runner.check",
}
#: keys that name a file the run reads, which must exist: a page's (``outputs/…/<ts>``) stands
#: for one the reader has, so a file is made for it
READ_PATHS = ("ckpt_path", "model.pretrained", "pretrained", "data.tokenizer")
#: and a study's arm's checkpoint to reuse (``pretrain.arms.<name>.pretrained``)
READ_PATH_PATTERN = re.compile(r"pretrain\.arms\.[^.=]+\.pretrained")


def compose_as_entry_point(config: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config>.yaml`` with ``overrides`` and check it as the entry point would
    (Hydra must be initialised)."""
    if not any(o.split("=", 1)[0].lstrip("+~") == "paths.output_dir" for o in overrides):
        # ${hydra:runtime.output_dir} resolves only inside a run
        overrides = [*overrides, f"paths.output_dir='{output_dir}'"]
    overrides = list(overrides)
    for i, override in enumerate(overrides):
        key, _, value = override.partition("=")
        read = key.lstrip("+") in READ_PATHS or READ_PATH_PATTERN.fullmatch(key.lstrip("+"))
        if read and value not in ("", "null"):
            stand_in = output_dir / "read" / key.lstrip("+")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
            overrides[i] = f"{key}='{stand_in}'"
    cfg = compose(config_name=config, overrides=overrides)
    if config in CHECKS:
        locate(CHECKS[config])(cfg)
    return cfg


def test_the_pages_have_commands() -> None:
    configs = {c.config for c in COMMANDS}
    assert configs == {"train", "eval", "generate", "export", "pipeline"}, configs
    assert len(COMMANDS) > 30


def command_params() -> list:
    """A compose costs about 0.3 s: a study (which composes each of its runs) or a sweep of more
    than two points is ``slow``."""
    return [
        pytest.param(
            c,
            id=str(c),
            marks=[pytest.mark.slow]
            if c.config == "pipeline" or len(grid(c.overrides)) > 2
            else [],
        )
        for c in COMMANDS
    ]


#: (config, overrides) → the error it gave, or None: a command the pages repeat is composed once
VERDICTS: dict[tuple[str, tuple[str, ...]], str | None] = {}


#: data whose classes are counted from the reader's own files, which are not here: the page's
#: command is composed with a class count in their place
COUNTED = ("data=text_classification", "data=image_folder")


def verdict(config: str, overrides: list[str], output_dir: Path) -> str | None:
    if any(o in COUNTED for o in overrides) and not any(
        o.startswith("data.num_classes=") for o in overrides
    ):
        overrides = [*overrides, "data.num_classes=2"]
    key = (config, tuple(overrides))
    if key not in VERDICTS:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                compose_as_entry_point(config, overrides, output_dir)
            VERDICTS[key] = None
        except Exception as err:
            VERDICTS[key] = " ".join(f"{type(err).__name__}: {err}".split())
        finally:
            GlobalHydra.instance().clear()
    return VERDICTS[key]


@pytest.mark.parametrize("command", command_params())
def test_command_composes(command: Command, tmp_path: Path) -> None:
    plugin = missing_plugin(list(command.overrides))
    if plugin:
        pytest.skip(plugin)
    for point in grid(command.overrides):
        error = verdict(command.config, point, tmp_path)
        if error:
            pytest.fail(f"{command}\n  does not compose with {point}:\n  {error}", pytrace=False)


# -- references -------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]+`", "", prose(page.read_text()))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


@pytest.mark.parametrize("page", REFERENCING, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", REFERENCING, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_exist(page: Path) -> None:
    """``src/ptft/…``, ``tests/…``, ``conf/…``, ``bench/…``, ``docs/…`` in code spans."""
    missing = []
    for span in code_spans(page.read_text()):
        for path in re.findall(r"(?<![\w/.])((?:src|tests|conf|bench|docs|\.ci)/[\w./-]*)", span):
            if path in EXAMPLE_PATHS or "*" in span or "<" in span:
                continue
            if not (ROOT / path).exists():
                missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module or class body defines (functions, classes, assignments, imports)."""
    names = set()
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """Whether ``ptft.a.b.Name.attr`` names a module of src/ptft and what it defines, read
    from the source (nothing is imported)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:split])
        source = (
            base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        )
        if not source.is_file():
            continue
        scope: ast.AST = ast.parse(source.read_text())
        for name in parts[split:]:
            if name not in defined_names(scope):
                return False
            scope = next((n for n in scope.body if getattr(n, "name", None) == name), scope)
        return True
    return False


@pytest.mark.parametrize("page", REFERENCING, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_ptft_names_exist(page: Path) -> None:
    """``ptft.runs.distributed``, ``ptft.objectives.losses.nt_xent(…)`` … in code spans."""
    names = {
        n for span in code_spans(page.read_text()) for n in re.findall(r"\bptft(?:\.\w+)+", span)
    }
    missing = sorted(n for n in names if n not in VIRTUAL_PACKAGES and not resolves(n))
    assert not missing, f"{page.relative_to(ROOT)} names what src/ptft does not define: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_blocks_parse(page: Path) -> None:
    """Every block names its language (so that no command escapes the checks above)."""
    for language, body, line in code_blocks(page.read_text()):
        where = f"{page.relative_to(ROOT)}:{line}"
        assert language, f"{where}: name the block's language (bash, python, yaml, text)"
        if language == "python":
            compile(body, where, "exec")
        elif language in {"yaml", "yml"}:
            assert yaml.safe_load(body) is not None, where
