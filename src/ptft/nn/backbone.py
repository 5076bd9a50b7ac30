"""What every backbone offers, and how one is built from its plain-dict config.

A backbone config is a plain dict ``{"_target_": "ptft.nn.cnn.CNN", ...kwargs}``; the
input shape comes from the data. The same dict is stored in every checkpoint so the
handoff can rebuild the architecture without the user repeating it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ptft.config.targets import locate


class Backbone(nn.Module):
    """Turns an input into features; knows its ``out_dim`` and its layer groups."""

    out_dim: int

    def layer_groups(self) -> list[nn.Module]:
        """The backbone's layer groups, bottom (input side) to top (feature side)."""
        raise NotImplementedError


def build_backbone(config: Mapping[str, Any], input_shape: Sequence[int]) -> Backbone:
    """Build a backbone from ``config`` (with ``_target_``) for inputs of ``input_shape``."""
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    if "_target_" not in config:
        raise ValueError("backbone config has no _target_; e.g. model/backbone=cnn")
    cls = locate(config["_target_"])
    # checked before the call: only a backbone class is ever called with the config's arguments
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"{config['_target_']} is not a ptft.nn.backbone.Backbone")
    backbone = cls(input_shape=tuple(input_shape), **kwargs)
    if not isinstance(backbone, Backbone):  # a metaclass or __new__ can return anything
        raise TypeError(f"{config['_target_']} is not a ptft.nn.backbone.Backbone")
    return backbone
