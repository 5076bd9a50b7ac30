"""Multi-process strategies that re-launch ``ptft-train`` under Hydra, in runs and multiruns.

Lightning's ``strategy=ddp`` (and ``fsdp``, ``deepspeed``) starts ranks 1…N-1 by running the
same command line again. Under Hydra that command is wrong in three ways: inside a multirun
it still carries ``-m`` and every sweep, so each child starts a sweep of its own; its run
directory is the *run* pattern (a new timestamp), not the job's directory; and each child
sets up Hydra's file logging next to rank 0's. After the first job of a sweep, the
launcher's environment variables (``LOCAL_RANK``, ``WORLD_SIZE``…) also stay behind in the
sweep process, so the next job believes it is a child and never starts its peers.

ptft therefore swaps the launcher of those strategies for :class:`HydraScriptLauncher`, which
starts each child as one plain run of this job alone:

* the entry module (``python -m ptft.train``), the config name and any ``--config-dir``;
* the job's own overrides (one point of a sweep, never the sweep), ``hydra.mode=RUN``;
* ``hydra.run.dir=<this job's output dir>`` and ``hydra.output_subdir=null``: one run
  directory and one ``.hydra/`` record, written by rank 0;
* ``hydra/job_logging=ptft_worker``: children log errors to the console only, so the run has
  one log file and rank 0 does the talking (Lightning's own messages are rank-zero already);
* ``PTFT_DDP_WORKER=1`` in the environment, so entry points know they are a child.

:func:`distributed_job` wraps a whole job in the launching process: afterwards it closes the
process group, reaps the children and restores the environment, so that the next job of a
sweep starts from a clean process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from ptft.cli import quote_override
from ptft.errors import ConfigError
from ptft.runs.ranks import WORKER_ENV, is_relaunched_worker

log = logging.getLogger(__name__)

#: what the subprocess launcher writes into ``os.environ`` of the launching process
LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
)
#: Hydra overrides that belong to the sweep or to rank 0's outputs, never to a child's run
_SWEEP_KEYS = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.run",
    "hydra.output_subdir",
    "hydra.job.num",
    "hydra.job.id",
    "hydra/job_logging",
    "hydra.job_logging",
    "hydra.callbacks",
)


def _entry_module() -> str:
    """The module to run in a child: the ``ptft.*`` entry point this process runs, else
    ``ptft.train``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("ptft."):
        return spec.name
    script = Path(sys.argv[0]).name if sys.argv else ""
    if script.startswith("ptft-"):  # a console script: ptft-train → ptft.train
        return "ptft." + script[len("ptft-") :].replace("-", "_")
    return "ptft.train"  # e.g. a joblib or submitit worker running a ptft-train job


def _keeps(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return not any(
        key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in _SWEEP_KEYS
    )


def worker_command() -> tuple[list[str], str]:
    """The command line and working directory of a child process for the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = [
        sys.executable,
        "-m",
        _entry_module(),
        "--config-name",
        str(hydra_cfg.job.config_name),
    ]
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line":  # --config-dir adds a search path of this provider
            command += ["--config-dir", str(source.path).removeprefix("file://")]
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if _keeps(o)]
    command += [
        "hydra.mode=RUN",
        f"hydra.run.dir={quote_override(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",
        "hydra/job_logging=ptft_worker",
    ]
    return command, str(hydra_cfg.runtime.cwd)


class HydraScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, with children that run this Hydra job once (see the
    module)."""

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        command, cwd = worker_command()
        log.debug("starting %d DDP worker(s): %s", self.num_processes - 1, " ".join(command))
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), WORKER_ENV: "1"}
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        # Lightning's version also starts an observer that SIGKILLs this process when a child
        # fails: that would end a whole sweep. Here a failed child takes its peers down, and
        # rank 0's next collective fails, so the job fails and the sweep goes on.
        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            _ChildWatch(self.procs).start()
        # N processes on one machine share its cores (OMP_NUM_THREADS, when set, decides)
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class _ChildWatch(threading.Thread):
    """Terminates the other children as soon as one child exits with an error."""

    def __init__(self, procs: Sequence[subprocess.Popen], period: float = 2.0) -> None:
        super().__init__(daemon=True, name="ptft-ddp-children")
        self.procs, self.period = list(procs), period

    def run(self) -> None:
        while True:
            codes = [p.poll() for p in self.procs]
            if all(code == 0 for code in codes):
                return
            failed = [(i + 1, code) for i, code in enumerate(codes) if code]
            if failed:
                log.error(
                    "DDP worker(s) of local rank %s exited with status %s: stopping the others",
                    ", ".join(str(r) for r, _ in failed),
                    ", ".join(str(c) for _, c in failed),
                )
                for proc in self.procs:
                    if proc.poll() is None:
                        proc.kill()
                return
            time.sleep(self.period)


def _relaunching(cls: type) -> type:
    """A subclass of a Lightning strategy whose subprocess launcher is
    :class:`HydraScriptLauncher`."""

    def _configure_launcher(self: Any) -> None:
        cls._configure_launcher(self)
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = HydraScriptLauncher(
                self.cluster_environment, self.num_processes, self.num_nodes
            )

    return type(
        f"Hydra{cls.__name__}",
        (cls,),
        {"_configure_launcher": _configure_launcher, "__module__": __name__},
    )


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or a SLURM task's
    share), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _accelerator_kind(accelerator: Any) -> str | None:
    """``cpu`` or ``cuda``: what ``trainer.accelerator`` runs on here (``auto`` as Lightning
    chooses it); None for the others (MPS: one device; TPUs; an Accelerator object) and for
    GPUs on a machine without any (Lightning says that they are not available)."""
    if not isinstance(accelerator, str):
        return None
    name = accelerator.lower()
    if name in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if name == "auto" and not torch.backends.mps.is_available():
        return "cpu"
    return "cpu" if name == "cpu" else None


def _requested(kind: str, devices: Any) -> tuple[int, int | None] | None:
    """How many devices ``trainer.devices`` asks for and the highest GPU index it names (None
    when it names none), as Lightning reads it; None for a value Lightning refuses itself."""
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return (1 if kind == "cpu" else torch.cuda.device_count()), None
        try:
            devices = [int(x) for x in text.split(",") if x.strip()] if "," in text else int(text)
        except ValueError:
            return None
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        if devices == -1 and kind == "cuda":
            return torch.cuda.device_count(), None
        return (devices, None) if devices > 0 else None
    if isinstance(devices, Sequence) and devices and all(isinstance(d, int) for d in devices):
        return len(devices), max(devices)
    return None


def _external_processes() -> bool:
    """Whether the processes of the run exist already (SLURM tasks, torchrun): nothing is
    started here, and this process sees its own share of the machine only."""
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    return (
        is_relaunched_worker()
        or TorchElasticEnvironment.detect()
        or (int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1)
    )


def check_devices(trainer_cfg: Mapping[str, Any]) -> None:
    """Refuse, in one line, more CPU processes than this machine has cores and more GPUs than
    it has: ``trainer.devices=64`` on 2 cores would start 63 processes that starve each other
    (or wait for ever for a peer)."""
    devices = trainer_cfg.get("devices", "auto")
    kind = _accelerator_kind(trainer_cfg.get("accelerator", "auto"))
    asked = _requested(kind, devices) if kind else None
    if asked is None:
        return  # not a count ptft can check; Lightning says what is wrong with it
    count, top = asked
    if kind == "cpu":
        cores = available_cores()
        if count > cores and not _external_processes():
            raise ConfigError(
                f"trainer.devices={devices} starts {count} CPU processes, more than the {cores} "
                f"cores this machine gives the run; set trainer.devices to at most {cores}"
            )
        return
    gpus = torch.cuda.device_count()
    if gpus and (count > gpus or (top is not None and top >= gpus)):
        raise ConfigError(
            f"trainer.devices={devices} asks for more GPUs than the {gpus} this machine has "
            f"(indices 0..{gpus - 1}); set trainer.devices to at most {gpus}, or -1 for all"
        )


def num_processes(trainer_cfg: Mapping[str, Any]) -> int:
    """The processes a run of ``trainer_cfg`` spans (devices × nodes; 1 when it cannot say)."""
    kind = _accelerator_kind(trainer_cfg.get("accelerator", "auto"))
    asked = _requested(kind, trainer_cfg.get("devices", "auto")) if kind else None
    nodes = trainer_cfg.get("num_nodes", 1)
    nodes = nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 0 else 1
    return (asked[0] if asked else 1) * nodes


def _interactive() -> bool:
    """A Python prompt or notebook, where Lightning's ``auto`` forks (``ddp_fork``) instead of
    re-running a script."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def resolve_strategy(strategy: Any, trainer_cfg: Mapping[str, Any] | None = None) -> Any:
    """``trainer.strategy`` as the Trainer should get it: every strategy that re-runs the script
    runs it the Hydra way, with :class:`HydraScriptLauncher`:

    * a registered name (``ddp``, ``fsdp``, ``deepspeed_stage_2``…);
    * ``auto`` when the run spans several processes (``trainer.devices=2``, ``-1`` or ``auto``
      on a machine with several GPUs, ``trainer.num_nodes>1``), which Lightning makes ``ddp``;
    * a strategy node (``_target_: lightning.pytorch.strategies.DDPStrategy`` …).

    Anything else is returned as it is. With ``trainer_cfg`` (the run's ``trainer`` node), the
    devices are checked against the machine first (:func:`check_devices`)."""
    if trainer_cfg is not None:
        check_devices(trainer_cfg)
        processes = num_processes(trainer_cfg)
        if strategy in (None, "auto") and processes > 1:
            from hydra.core.hydra_config import HydraConfig

            if _interactive() and not HydraConfig.initialized():
                return strategy  # Lightning forks: nothing re-runs
            devices = trainer_cfg.get("devices")
            return _relaunched("ddp", {}, f"trainer.strategy=auto with trainer.devices={devices}")
    if isinstance(strategy, Mapping) and "_target_" in strategy:
        return _strategy_node(strategy)
    if not isinstance(strategy, str) or strategy not in StrategyRegistry:
        return strategy
    entry = StrategyRegistry[strategy]
    params = dict(entry["init_params"])
    if params.get("start_method", "popen") != "popen":
        return strategy  # ddp_spawn, ddp_fork, ddp_notebook: no script re-run
    if not hasattr(entry["strategy"], "_configure_launcher"):
        return strategy
    return _relaunched(strategy, params, f"trainer.strategy={strategy}")


def _strategy_node(node: Mapping[str, Any]) -> Any:
    """A strategy given as a ``_target_`` node, built with :class:`HydraScriptLauncher` when it
    would re-run the script; else the node, for the Trainer's instantiation."""
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import Strategy

    factory = instantiate(node, _partial_=True)  # the class and its (built) arguments
    cls = getattr(factory, "func", None)
    if not (
        isinstance(cls, type)
        and issubclass(cls, Strategy)
        and hasattr(cls, "_configure_launcher")
        and factory.keywords.get("start_method", "popen") == "popen"
    ):
        return node
    label = f"trainer.strategy._target_={node['_target_']}"
    return _relaunched(cls, dict(factory.keywords), label, args=factory.args)


def _relaunched(
    strategy: str | type, params: Mapping[str, Any], label: str, args: Sequence[Any] = ()
) -> Any:
    """The strategy (a registered name or a class) with :class:`HydraScriptLauncher`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or _entry_module() != "ptft.train":
        raise ConfigError(
            f"{label} re-runs the ptft-train command for every extra process, "
            "and this run was not started by ptft-train "
            "(ptft-pipeline runs many stages in one process); use trainer.strategy=ddp_spawn here"
        )
    name = strategy if isinstance(strategy, str) else strategy.__name__
    cls = StrategyRegistry[strategy]["strategy"] if isinstance(strategy, str) else strategy
    try:
        return _relaunching(cls)(*args, **params)
    except Exception as err:  # a strategy whose package is missing (DeepSpeed) says so when built
        if "deepspeed" in name.lower() and "install" in str(err).lower():
            raise ConfigError(f"{label} needs DeepSpeed: pip install 'ptft[deepspeed]'") from err
        raise


def batchnorm_sync(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer arguments for ``sync_batchnorm``: torch's SyncBatchNorm on GPUs, and on CPU (where
    it does not run) :class:`~ptft.nn.global_batchnorm.GlobalBatchNormSync` in its place."""
    if trainer_cfg.get("sync_batchnorm") and trainer_cfg.get("accelerator") == "cpu":
        from ptft.nn.global_batchnorm import GlobalBatchNormSync

        return {"sync_batchnorm": False, "plugins": [GlobalBatchNormSync()]}
    return {}


@contextlib.contextmanager
def distributed_job() -> Iterator[list[L.Trainer]]:
    """Run one job; yields a list to put its Trainer in. Afterwards, in the launching process,
    close the job's process group, wait for (or stop) its child processes and restore the
    environment variables the launcher set."""
    saved = {key: os.environ.get(key) for key in LAUNCH_ENV}
    threads = torch.get_num_threads()
    holder: list[L.Trainer] = []
    try:
        yield holder
    finally:
        if not is_relaunched_worker():
            from ptft.callbacks.process_group import close_process_group

            close_process_group()
            for trainer in holder:
                launcher = getattr(trainer.strategy, "launcher", None)
                for local_rank, proc in enumerate(getattr(launcher, "procs", []), start=1):
                    try:
                        proc.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        log.error(
                            "DDP worker of local rank %d did not exit: killing it", local_rank
                        )
                        proc.kill()
                        proc.wait()
                    if proc.returncode:
                        log.error(
                            "DDP worker of local rank %d exited with status %d "
                            "(its error is printed above)",
                            local_rank,
                            proc.returncode,
                        )
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            torch.set_num_threads(threads)
