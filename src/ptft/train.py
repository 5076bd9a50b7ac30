"""``ptft-train``: compose the config, build data, model and Trainer, fit and test.

    ptft-train experiment=digits_simclr
    ptft-train experiment=digits_classifier model.pretrained=outputs/digits_simclr/runs/<ts>
    ptft-train -m model.optimizer.lr=1e-3,3e-3
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ptft import config
from ptft.cli import config_dir, one_line_errors

config.register()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` so that sweepers can rank runs."""
    from ptft.run import train  # torch and Lightning load only when a run starts

    metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
