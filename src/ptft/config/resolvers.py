"""OmegaConf resolvers of ptft's Hydra, sweeper and launcher configs: they derive a plugin's
setting from the run's own config, so that it is said once
(``${ptft.direction:${model.monitor_mode}}``), and claim each run its own directory
(``${ptft.unique:...}``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptft.errors import ConfigError

#: Lightning's ``mode`` → Optuna's ``direction``
DIRECTIONS = {"min": "minimize", "max": "maximize"}
#: accelerators that ask SLURM for GPUs (``auto`` on a cluster means the node's GPUs)
GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def direction(monitor_mode: str) -> str:
    """``model.monitor_mode`` as an Optuna direction."""
    if monitor_mode not in DIRECTIONS:
        raise ConfigError(f"model.monitor_mode={monitor_mode}: expected min or max")
    return DIRECTIONS[monitor_mode]


def devices_per_node(devices: Any) -> int:
    """``trainer.devices`` as a count: SLURM starts one task (one DDP process) per device."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, list | tuple | ListConfig) and len(devices) > 0:  # device indices
        return len(devices)
    raise ConfigError(
        f"trainer.devices={devices}: a SLURM job needs the number of devices per node; "
        "set trainer.devices=N"
    )


def gpus_per_node(accelerator: str, devices: Any) -> int | None:
    """The GPUs a SLURM job asks for on each node: none for a CPU run."""
    return devices_per_node(devices) if accelerator in GPU_ACCELERATORS else None


def unique(base: str) -> str:
    """A directory for one run (or one sweep), claimed with ``os.mkdir``: ``base`` when it does
    not exist, else ``base_1``, ``base_2``… Two processes started in the same second (so with
    the same timestamp in ``base``) never share a directory: ``mkdir`` succeeds for one of them
    only. Registered with OmegaConf's cache, keyed by the unresolved argument, so a config
    resolves to one directory however often Hydra reads ``hydra.run.dir``, and a sweep's job
    configs (Hydra copies the cache into them, in the launcher's workers too) see the sweep's
    own. ptft's DDP children are given their job's directory (``hydra.run.dir=…``) and claim
    none; the ranks of a run that a cluster started together (``srun``, ``torchrun``) share
    ``base``, as they did before (none of them can know the name another one claimed)."""
    path = Path(base)
    if _started_together():
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = path if n == 0 else path.with_name(f"{path.name}_{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return str(candidate)
    raise ConfigError(f"{base}: 10000 directories of this name exist already; clean up outputs/")


def basename(path: str) -> str:
    """The last part of a path: a tracker's run name from the run directory
    (``outputs/digits_classifier/runs/2026-11-30_16-07-04`` → ``2026-11-30_16-07-04``)."""
    return Path(str(path)).name


def run_tags(task_name: str) -> ListConfig:
    """A tracker's tags for a run: its ``task_name`` and, when the run was composed by Hydra
    with ``experiment=...``, that experiment (once: it is often the task_name too)."""
    from hydra.core.hydra_config import HydraConfig

    tags = [str(task_name)]
    if HydraConfig.initialized():
        experiment = HydraConfig.get().runtime.choices.get("experiment")
        if experiment and experiment not in tags:
            tags.append(str(experiment))
    return ListConfig(tags)


def _started_together() -> bool:
    """Whether this process is one rank of a run whose processes a cluster started (SLURM's
    tasks under ``srun``, torchrun's workers)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return _count(env.get("WORLD_SIZE")) > 1
    return "SLURM_PROCID" in env and _count(env.get("SLURM_NTASKS")) > 1


def _count(value: str | None) -> int:
    return int(value) if value and value.strip().isdigit() else 1


def num_classes(*, _parent_: Any) -> int | None:
    """``data.num_classes: ${ptft.num_classes:}``: the number of classes, counted from the data
    that the data config names, by its datamodule's ``count_classes(settings)`` (a classmethod
    that reads only what it needs: the training split's labels). For data whose classes are
    known only once the user's files are read (``data=text_classification``); the model config
    reads ``${data.num_classes}`` as for any data set. None where the data have no classes
    (unlabelled images). A value left ``???`` is not passed: the counter says what is missing."""
    from ptft.config.targets import locate

    target = _parent_.get("_target_")
    counter = getattr(locate(target), "count_classes", None) if isinstance(target, str) else None
    if counter is None:
        raise ConfigError(f"data._target_={target} cannot count its classes; set data.num_classes")
    settings = {}
    for key in _parent_.keys():
        if key in ("_target_", "num_classes", "input_shape") or OmegaConf.is_missing(_parent_, key):
            continue
        value = _parent_[key]
        settings[str(key)] = (
            OmegaConf.to_container(value, resolve=True)
            if isinstance(value, DictConfig | ListConfig)
            else value
        )
    count = counter(settings)
    return None if count is None else int(count)


RESOLVERS = {
    "ptft.direction": direction,
    "ptft.devices_per_node": devices_per_node,
    "ptft.gpus_per_node": gpus_per_node,
    "ptft.num_classes": num_classes,
    "ptft.basename": basename,
    "ptft.run_tags": run_tags,
}
#: resolvers whose result is cached in the config (keyed by the unresolved arguments)
CACHED = {"ptft.unique": unique}


def register() -> None:
    """Register the resolvers with OmegaConf (idempotent); the entry points call it before
    composing."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    for name, fn in CACHED.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
