"""Packaging: every subpackage is listed, and the wheel carries the Hydra configs."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'^\s+"(ptft[\w.]*)",$', text, flags=re.M))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "ptft").rglob("__init__.py")
    }
    assert listed == on_disk | {"ptft.conf"}


def test_wheel_contains_the_configs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("ptft-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {str(p.relative_to(ROOT)) for p in (ROOT / "conf").rglob("*.yaml")}
    assert {f"ptft/{c}" for c in conf} <= names
    assert "ptft/train.py" in names
