"""Values put into Hydra overrides by ptft (the study's paths, a DDP worker's run directory)
read back exactly as given, whatever characters they hold."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ptft.cli import quote_override

VALUES = [
    "runs/2024-01-01/12-00-00",
    "a b=c,d[e]{f}:g",
    'it\'s "quoted"',
    "x\\y",  # a backslash is literal inside the string...
    "C:\\dir\\",  # ...and escapes at the end
    "a\\'b",  # or before a quote
    "${oc.env:HOME}/no/interpolation",
    "a\\${b}",
    "null",
    "",
]


@pytest.mark.parametrize("value", VALUES)
def test_quoted_values_read_back_as_given(value):
    parsed = OverridesParser.create().parse_override(f"paths.output_dir={quote_override(value)}")
    resolved = OmegaConf.to_container(OmegaConf.create({"v": parsed.value()}), resolve=True)["v"]
    assert resolved == value
