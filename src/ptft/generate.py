"""``ptft-generate ckpt_path=FILE prompt="…"``: continue text with a causal LM checkpoint (a
``.ckpt``, a run directory, a ``ptft-export`` directory or a Hugging Face model directory).

Greedy by default; ``temperature``, ``top_k`` and ``top_p`` sample instead. The module and
its tokenizer come from the checkpoint; each completion is printed and written to
``generations.jsonl`` in the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import NO_PROMPT, config_dir, one_line_errors, validated
from ptft.errors import ConfigError

config.register()


def check(cfg: DictConfig) -> None:
    """What ``ptft-generate`` refuses before Hydra writes a run directory: the settings out of
    their bounds (``ckpt_path`` left out or not a file, ``top_p=2``, ...: the schema's) and no
    prompt. The checkpoint itself is read when the run starts."""
    from ptft.config.validate import validate

    validate(cfg)
    if cfg.prompt is None and not cfg.prompts:
        raise ConfigError(NO_PROMPT)


@validated("generate", check="ptft.generate.check")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="generate")
@one_line_errors
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    # the commonest mistakes are answered at once, before torch loads (generate_text checks again)
    if not Path(cfg.ckpt_path).expanduser().exists():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file or model directory")
    if cfg.prompt is None and not cfg.prompts:
        raise ConfigError(NO_PROMPT)
    from ptft.runs.console import quiet_libraries
    from ptft.runs.generate import generate_text  # torch loads only when a run starts

    quiet_libraries()

    return generate_text(cfg)


if __name__ == "__main__":
    main()
