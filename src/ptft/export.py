"""``ptft-export ckpt_path=… format=hf|safetensors|onnx|peft output=DIR``: a ptft model (or an
imported one) as a Hugging Face directory, a pickle-free safetensors export, an ONNX graph or
a PEFT adapter; see :mod:`ptft.runs.export`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors, validated
from ptft.errors import ConfigError

config.register()

FORMATS = ("hf", "safetensors", "onnx", "peft")


def check(cfg: DictConfig) -> None:
    """What ``ptft-export`` refuses before Hydra writes anything: the schema's bounds, an
    unknown format."""
    from ptft.config.validate import validate

    validate(cfg)
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not one of {', '.join(FORMATS)}")


@validated("export", check="ptft.export.check")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> Path:
    from ptft.runs.console import quiet_libraries
    from ptft.runs.export import export  # torch loads only when a run starts

    quiet_libraries()
    return export(cfg)


if __name__ == "__main__":
    main()
