"""Fit and test one run: seed, handoff, data, model and Trainer from the config, then
``trainer.fit`` and ``trainer.test`` of the best checkpoint.

Shared by ``ptft-train`` (one run per process) and ``ptft-pipeline`` (many runs in one process).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ptft.callbacks.final_checkpoint import FinalCheckpoint
from ptft.callbacks.finite_loss import FiniteLoss
from ptft.callbacks.process_group import ProcessGroupCleanup
from ptft.callbacks.resume import ResumeState
from ptft.callbacks.run_record import RunRecord
from ptft.config.validate import validate
from ptft.errors import ConfigError
from ptft.handoff import read_pretrained, with_tokenizer
from ptft.modules.backbone_module import BackboneModule
from ptft.runs.build import build_datamodule, build_model, build_trainer, plain
from ptft.runs.distributed import check_devices, distributed_job
from ptft.runs.load import check_resume
from ptft.runs.trackers import log_final_metrics, log_run_config

log = logging.getLogger(__name__)

#: the exit status of a run stopped by SIGTERM (128 + the signal's number, as a shell reports it)
SIGTERM_EXIT = 143


def metrics_of(trainer: L.Trainer) -> dict[str, float]:
    return {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
    }


def check_run(cfg: DictConfig) -> None:
    """Everything ``ptft-train`` checks before a run (and before Hydra writes its directory): the
    config against the code (:func:`ptft.config.validate.validate`), then the Trainer settings
    that take several types, which Lightning checks only when the Trainer is built, or never
    (``val_check_interval`` under ``fast_dev_run``): the devices against this machine
    (:func:`ptft.runs.distributed.check_devices`) and ``trainer.val_check_interval``."""
    validate(cfg)
    trainer_cfg = cfg.get("trainer")
    if trainer_cfg is None:
        return
    check_devices(trainer_cfg)
    interval = trainer_cfg.get("val_check_interval")
    if interval is not None and not (
        (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1)
        or (isinstance(interval, float) and 0 < interval <= 1)
    ):
        raise ConfigError(
            f"trainer.val_check_interval={interval}: give a number of training batches (an int "
            ">= 1), a fraction of an epoch in (0, 1], or null for once per epoch"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and/or test as the config says; returns the final val/test metrics. The config is
    checked first (:func:`check_run`): in a multirun, a job with a bad value fails at once and
    the sweep goes on."""
    check_run(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: no such checkpoint file; pass the .ckpt to resume from"
        )
    model_cfg, data_cfg = plain(cfg.model), plain(cfg.data)
    output_dir = Path(cfg.paths.output_dir)
    pretrained = (
        read_pretrained(model_cfg["pretrained"], model_cfg.get("backbone"))
        if model_cfg.get("pretrained")
        else None
    )
    if pretrained is not None and pretrained.tokenizer is not None:
        # fine-tuning reads text exactly as the backbone was pretrained on it
        data_cfg = with_tokenizer(
            data_cfg,
            pretrained.tokenizer,
            output_dir,
            f"model.pretrained={pretrained.path}",
            pretrained.config.get("special_tokens"),
        )
    elif data_cfg.get("tokenizer") and isinstance(model_cfg.get("backbone"), dict):
        # from scratch on an imported tokenizer: the model frames, masks and pools with its ids
        from ptft.data.tokenizer import special_tokens_of

        specials = special_tokens_of(data_cfg["tokenizer"])
        if not specials.native:
            roles = {"special_tokens": specials.to_dict(), "pad_token_id": specials.pad_id}
            model_cfg["backbone"] = {**model_cfg["backbone"], **roles}
    model = build_model(model_cfg, pretrained)
    if cfg.get("ckpt_path"):  # one line for a file that cannot resume this model
        check_resume(cfg.ckpt_path, model)
    datamodule = build_datamodule(data_cfg, model.supervised, model.train_labels)
    record = {
        "data": data_cfg,
        "model": model_cfg,
        "seed": cfg.get("seed"),
        "task_name": cfg.get("task_name"),
    }
    with distributed_job() as job:
        callbacks = [
            RunRecord(record, output_dir),
            FinalCheckpoint(),
            ProcessGroupCleanup(),
            FiniteLoss(),
            ResumeState(),
        ]
        trainer = build_trainer(cfg, callbacks)
        job.append(trainer)
        return fit_and_test(cfg, trainer, model, datamodule)


def fit_and_test(
    cfg: DictConfig, trainer: L.Trainer, model: BackboneModule, datamodule: L.LightningDataModule
) -> dict[str, float]:
    """``trainer.fit`` then ``trainer.test`` of the best checkpoint, as
    ``cfg.train``/``cfg.test`` say; every logger gets the resolved config as hyperparameters
    first, and the final metrics last (:mod:`ptft.runs.trackers`)."""
    metrics: dict[str, float] = {}
    log_run_config(trainer, cfg)
    if cfg.get("train", True):
        try:
            trainer.fit(
                model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True
            )
        except SIGTERMException:
            raise preempted(trainer, "training") from None
        metrics.update(metrics_of(trainer))
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if cfg.get("train", True) and not best:
            log.info("no best checkpoint was saved: testing the final weights")
        try:
            trainer.test(
                model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=False,
                weights_only=True,
            )
        except SIGTERMException:
            raise preempted(trainer, "testing") from None
        metrics.update({k: v for k, v in metrics_of(trainer).items() if k.startswith("test/")})
    log_final_metrics(trainer, cfg, metrics)
    if trainer.is_global_zero:
        log.info("final metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return metrics


def preempted(trainer: L.Trainer, stage: str) -> SystemExit:
    """The exit of a run stopped by SIGTERM (a cluster's preemption), after one line on stderr
    (and in the run's log) that says how to go on: Lightning stops after the current batch and
    :class:`~ptft.callbacks.resume.ResumeState` has written ``last.ckpt``."""
    resume = next((c for c in trainer.callbacks if isinstance(c, ResumeState)), None)
    step = trainer.global_step
    if resume is not None and resume.preempted is not None:
        message = (
            f"stopped by SIGTERM at step {step}; resume with ckpt_path={resume.preempted} "
            "(and the same overrides)"
        )
    elif stage == "testing":
        message = "stopped by SIGTERM while testing; the training had finished and is saved"
    else:
        message = (
            f"stopped by SIGTERM at step {step}, before this run trained a step; "
            "run the same command again"
        )
    if trainer.is_global_zero:
        log.warning(message)
        print(f"interrupted: {message}", file=sys.stderr, flush=True)
    return SystemExit(SIGTERM_EXIT)
