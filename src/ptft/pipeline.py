"""``ptft-pipeline``: the label-efficiency study, pretrain → fine-tune, in one process.

    ptft-pipeline                                  # SimCLR on digits, 4 fractions x 4 methods
    ptft-pipeline label_fractions=[0.1] seeds=1    # a quick look
    ptft-pipeline pretrained=outputs/pipeline/runs/<ts>/pretrain   # reuse a pretraining run
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors

config.register()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="pipeline")
@one_line_errors
def main(cfg: DictConfig) -> float:
    """Returns the mean test accuracy of the best pretrained method at the smallest fraction."""
    from ptft.study import run_study  # torch and Lightning load only when a run starts

    return run_study(cfg)


if __name__ == "__main__":
    main()
