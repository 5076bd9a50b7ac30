"""``ptft-train``: compose the config, build data, model and Trainer, fit and test.

ptft-train experiment=digits_simclr
ptft-train experiment=digits_classifier model.pretrained=outputs/digits_simclr/runs/<ts>
ptft-train -m model.optimizer.lr=1e-3,3e-3
ptft-train hparams_search=digits_optuna experiment=digits_simclr
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors, plugins_checked, validated
from ptft.sweeps import job as sweep

config.register()


@plugins_checked
@validated("train", check="ptft.runs.fit.check_run")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` so that sweepers can rank runs; in a multirun, a job that
    fails is recorded as failed and returns the worst value instead of ending the sweep."""
    from ptft.runs.console import quiet_libraries
    from ptft.runs.fit import train  # torch and Lightning load only when a run starts

    quiet_libraries()

    return sweep.run_job(cfg, train)


if __name__ == "__main__":
    main()
