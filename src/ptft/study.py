"""The label-efficiency study behind ``ptft-pipeline``.

Pretrain once (or reuse a checkpoint), then for every label fraction, method and seed
fine-tune in this process (imports cost seconds; a run on digits costs about as much),
and fit scikit-learn's SVC on the raw pixels of the very same labelled subsets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ptft.errors import ConfigError
from ptft.handoff import resolve_checkpoint
from ptft.report import Result, write_report
from ptft.run import build_datamodule, plain, train

log = logging.getLogger(__name__)

METHODS = ("scratch", "linear_probe", "finetune", "svc")
#: how each fine-tuning method starts: pretrained weights or not, frozen or not
METHOD_SETUP = {
    "scratch": {"pretrained": False, "finetune": "full"},
    "linear_probe": {"pretrained": True, "finetune": "linear_probe"},
    "finetune": {"pretrained": True, "finetune": "full"},
}
#: fine-tuning runs inside the study write no checkpoints and draw no progress bars; they are
#: tested on their final weights (choosing by validation accuracy would use more labels)
QUIET = [
    "callbacks=none",
    "trainer.enable_checkpointing=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def quote(value: Any) -> str:
    """A value as a Hydra override literal (paths may hold characters the grammar reserves)."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def compose_train(overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name="train", overrides=overrides)
    except Exception as err:  # Hydra's own errors name the bad override
        raise ConfigError(f"pipeline overrides {overrides} do not compose: {err}".replace("\n", " ")) from err


def seeds_for(cfg: DictConfig, fraction: float) -> list[int]:
    count = cfg.small_fraction_seeds if fraction <= cfg.small_fraction else cfg.seeds
    return list(range(count))


def pretrain(cfg: DictConfig, out: Path) -> Path:
    """Run the pretraining stage (or reuse ``cfg.pretrained``) and return its checkpoint."""
    if cfg.pretrained:
        return resolve_checkpoint(cfg.pretrained)
    stage_dir = out / "pretrain"
    run_cfg = compose_train([*cfg.pretrain.overrides, f"paths.output_dir={quote(stage_dir)}"])
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
    start = time.perf_counter()
    train(run_cfg)
    log.info("pretraining took %.1f s", time.perf_counter() - start)
    return resolve_checkpoint(stage_dir)


def finetune_overrides(
    cfg: DictConfig, method: str, fraction: float, seed: int, ckpt: Path | None, stage_dir: Path
) -> list[str]:
    setup = METHOD_SETUP[method]
    return [
        *cfg.finetune.overrides,
        *QUIET,
        f"model.pretrained={quote(ckpt) if setup['pretrained'] and ckpt else 'null'}",
        f"model.finetune={setup['finetune']}",
        f"data.label_fraction={fraction}",
        f"seed={seed}",
        f"paths.output_dir={quote(stage_dir)}",
        *cfg.method_overrides.get(method, []),
    ]


def svc_scores(run_cfg: DictConfig, svc_kwargs: dict[str, Any]) -> tuple[float, float]:
    """Test accuracy and macro F1 of scikit-learn's SVC on raw pixels of the run's own
    labelled subset (the data config of a fine-tuning run at the same fraction and seed)."""
    from sklearn.metrics import f1_score
    from sklearn.svm import SVC

    datamodule = build_datamodule(plain(run_cfg.data), supervised=True)
    datamodule.setup("fit")
    (x, y), (xt, yt) = datamodule.splits["train"], datamodule.splits["test"]
    predicted = SVC(**svc_kwargs).fit(x.flatten(1).numpy(), y.numpy()).predict(xt.flatten(1).numpy())
    return float(np.mean(predicted == yt.numpy())), float(f1_score(yt.numpy(), predicted, average="macro"))


def run_study(cfg: DictConfig) -> float:
    unknown = sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"methods {unknown} are not known; choose from {list(METHODS)}")
    out = Path(HydraConfig.get().runtime.output_dir)
    ckpt = pretrain(cfg, out) if set(cfg.methods) & {"linear_probe", "finetune"} else None
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)

    results: list[Result] = []
    for fraction in cfg.label_fractions:
        for seed in seeds_for(cfg, fraction):
            for method in cfg.methods:
                stage_dir = out / "finetune" / f"fraction_{fraction}" / method / f"seed_{seed}"
                # the SVC reads its labelled subset from a scratch run's data config
                setup = "scratch" if method == "svc" else method
                run_cfg = compose_train(finetune_overrides(cfg, setup, fraction, seed, ckpt, stage_dir))
                start = time.perf_counter()
                if method == "svc":
                    acc, f1 = svc_scores(run_cfg, plain(cfg.svc))
                else:
                    stage_dir.mkdir(parents=True, exist_ok=True)
                    OmegaConf.save(run_cfg, stage_dir / "config.yaml", resolve=True)
                    metrics = train(run_cfg)
                    acc, f1 = metrics["test/acc"], metrics["test/f1"]
                result = Result(fraction, method, seed, acc, f1, time.perf_counter() - start)
                log.info("fraction %-5g %-12s seed %d: test/acc %.4f (%.1f s)", fraction, method, seed, acc, result.seconds)
                results.append(result)
    return write_report(results, out, cfg.methods)
