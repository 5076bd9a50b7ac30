"""OmegaConf resolvers of ptft's sweeper and launcher configs: they derive a plugin's setting
from the run's own config, so that it is said once (``${ptft.direction:${model.monitor_mode}}``)."""

from __future__ import annotations

from typing import Any

from omegaconf import ListConfig, OmegaConf

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


RESOLVERS = {
    "ptft.direction": direction,
    "ptft.devices_per_node": devices_per_node,
    "ptft.gpus_per_node": gpus_per_node,
}


def register() -> None:
    """Register the resolvers with OmegaConf (idempotent); the entry points call it before
    composing."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
