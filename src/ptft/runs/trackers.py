"""What every logger of a run (TensorBoard, CSV, MLflow, Weights & Biases: ``logger=…``) is given
besides the curves that the models log themselves, through Lightning's logger-agnostic
``log_hyperparams`` / ``log_metrics``:

* when the run starts, the resolved config (plain containers, as ``ptft-train --cfg job
  --resolve`` prints it) as hyperparameters: MLflow's params (flattened,
  ``model/optimizer/lr``), W&B's run config, ``hparams.yaml`` of TensorBoard and CSV;
* when it ends, the final metrics (the ones :func:`ptft.runs.fit.fit_and_test` returns) at the
  last step: MLflow's and W&B's summaries hold them, the CSV's last row, and TensorBoard's
  HParams tab, which shows them against the config.

The loggers' own methods write on global rank zero only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, without Hydra's own node."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.pop("hydra", None)
    return config


def log_run_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Give every logger the run's resolved config as its hyperparameters."""
    if not trainer.loggers:
        return
    config = run_config(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(config)


def log_final_metrics(trainer: L.Trainer, cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """Give every logger the run's final metrics at the last step, then close what stays open
    (a W&B run: several runs in one process, as ``ptft-pipeline`` makes, each get their own)."""
    if not trainer.loggers:
        return
    final = dict(metrics)
    step = trainer.global_step
    for logger in trainer.loggers:
        if final and isinstance(logger, TensorBoardLogger):
            # the HParams tab: the config against the final metrics (also written as scalars)
            logger.log_hyperparams(run_config(cfg), metrics=final, step=step)
        elif final:
            logger.log_metrics(final, step=step)
        logger.save()
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
