"""Concurrent runs never collide: two ``ptft-train`` started together in one folder get two
complete run directories; two processes building the same data cache both succeed and leave
the cache a single process would; a run never starts more processes than the machine has
cores or GPUs, and ``strategy=auto`` on several devices goes through ptft's launcher."""

from __future__ import annotations

import datetime
import filecmp
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric.plugins.environments import LightningEnvironment
from omegaconf import OmegaConf

from ptft.config.resolvers import unique
from ptft.data.pydoc_corpus import load_records
from ptft.data.text_files import TextFilesDataModule
from ptft.errors import ConfigError
from ptft.runs import distributed
from tests.helpers import QUIET, compose_train, run_cli


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[str, str]]:
    out = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, out, strict=True):
        assert p.returncode == 0, err[-3000:]
    return out


# ------------------------------------------------------------------------- run directories
def test_two_runs_started_together_get_two_complete_directories(tmp_path):
    # Every timestamp name of the next minutes is taken already (as by runs started in the
    # same second), so both runs must find the name taken and claim one of their own.
    runs = tmp_path / "outputs" / "digits_classifier" / "runs"
    runs.mkdir(parents=True)
    now = datetime.datetime.now()
    taken = {
        (now + datetime.timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(-2, 600)
    }
    for name in taken:
        (runs / name).mkdir()
    settings = {"1": "0.001", "2": "0.002"}  # seed → learning rate: each run's own overrides
    procs = [
        _popen(
            [
                "-m",
                "ptft.train",
                "experiment=digits_classifier",
                "trainer.max_steps=3",
                "trainer.val_check_interval=3",
                "logger=csv",
                "callbacks.embedding_projector=null",
                f"seed={seed}",
                f"model.optimizer.lr={lr}",
                *QUIET,
            ],
            tmp_path,
        )
        for seed, lr in settings.items()
    ]
    _finish(procs)

    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["digits_classifier"]
    assert [p.name for p in (tmp_path / "outputs" / "digits_classifier").iterdir()] == ["runs"]
    new = sorted(p for p in runs.iterdir() if p.name not in taken)
    assert len(new) == 2, [p.name for p in new]
    for run in new:  # <taken timestamp>_<n>: the stable layout, a suffix where the name was taken
        stem, _, n = run.name.rpartition("_")
        assert stem in taken and n.isdigit() and int(n) >= 1
    assert all(not any((runs / name).iterdir()) for name in taken)  # nobody wrote into another's
    seen = set()
    for run in new:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        seed = next(o.split("=", 1)[1] for o in overrides if o.startswith("seed="))
        assert f"model.optimizer.lr={settings[seed]}" in overrides
        seen.add(seed)
        assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= {
            p.name for p in (run / ".hydra").iterdir()
        }
        # one run's log, checkpoint and metrics, each from this run's own settings
        assert (run / "train.log").read_text().count("final metrics") == 1
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 3
        assert ckpt["ptft_run"]["seed"] == int(seed)
        assert ckpt["hyper_parameters"]["optimizer"]["lr"] == float(settings[seed])
        hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
        assert hparams["optimizer"]["lr"] == float(settings[seed])
        assert "val/acc" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert seen == set(settings)


def test_unique_claims_a_directory_once_per_config(tmp_path, monkeypatch):
    from ptft import config

    config.register()
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    base = tmp_path / "runs" / "2030-01-01_00-00-00"
    assert unique(str(base)) == str(base)
    assert unique(str(base)) == f"{base}_1"  # taken: the next free name
    assert unique(str(base)) == f"{base}_2"
    # Hydra reads hydra.run.dir more than once: one config, one directory
    cfg = OmegaConf.create({"root": str(tmp_path / "runs"), "dir": "${ptft.unique:${root}/x}"})
    assert cfg.dir == cfg.dir == str(tmp_path / "runs" / "x")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        base.name,
        f"{base.name}_1",
        f"{base.name}_2",
        "x",
    ]
    # the ranks of one srun (or torchrun) run share the name: none knows another's claim
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert unique(str(base)) == str(base)
    assert len(list((tmp_path / "runs").iterdir())) == 4


# ------------------------------------------------------------------------------ data caches
#: builds the caches of a token-block data module (tokenizer, token files) and the docstring
#: corpus of a small library; counts how often each was built, each build made slow so that a
#: process that does not wait for the other's lock would build it too
BUILD = """
import json, pathlib, sys, time
import ptft.data.pydoc_corpus as corpus, ptft.data.text as text, ptft.data.token_cache as cache
from ptft.data.text_files import TextFilesDataModule

work, name, settings = pathlib.Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
builds = {"corpus": 0, "tokenizer": 0, "token_files": 0}

def counted(module, function, key):
    inner = getattr(module, function)
    def build(*args, **kwargs):
        builds[key] += 1
        time.sleep(0.5)
        return inner(*args, **kwargs)
    setattr(module, function, build)

counted(corpus, "_build_records", "corpus")
counted(text, "train_tokenizer", "tokenizer")
counted(cache, "_write_token_file", "token_files")
(work / f"ready-{name}").touch()  # both processes start building at the same moment
deadline = time.time() + 120
while not (work / "go").exists() and time.time() < deadline:
    time.sleep(0.01)
records, _ = corpus.load_records(work / "cache" / "corpus", root=work / "lib")
dm = TextFilesDataModule(**settings)
dm.prepare_data()
dm.setup("fit")
tokens = {split: f.num_tokens for split, f in dm.token_files.items()}
print(json.dumps({"builds": builds, "records": len(records), "tokens": tokens}))
"""


def _write_sources(work: Path) -> None:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "tensor", "batch", "token", "cache", "lock", "run"]
    (work / "texts").mkdir(parents=True)
    for i in range(40):
        text = " ".join(rng.choice(words) + rng.choice(["", "s", "ed", "ing"]) for _ in range(300))
        (work / "texts" / f"doc{i:02d}.txt").write_text(text + "\n")
    (work / "lib" / "pkg").mkdir(parents=True)
    for i in range(6):
        source = f'"""Module {i}."""\n\ndef f{i}():\n    """Return {i}."""\n    return {i}\n'
        (work / "lib" / ("pkg" if i % 2 else "") / f"mod{i}.py").write_text(source)


def _text_files(work: Path) -> dict:
    """The data module's settings: a small vocabulary and blocks, every split a few files."""
    return {
        "files": str(work / "texts" / "*.txt"),
        "cache_dir": str(work / "cache" / "text"),
        "input_shape": [16],
        "vocab_size": 300,
        "block_size": 16,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix != ".lock")


def test_two_processes_building_the_same_cache_both_succeed_and_build_it_once(tmp_path):
    _write_sources(tmp_path)
    settings = json.dumps(_text_files(tmp_path))
    procs = [_popen(["-c", BUILD, str(tmp_path), str(i), settings], tmp_path) for i in (0, 1)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.05)
    (tmp_path / "go").touch()
    results = [json.loads(out.splitlines()[-1]) for out, _ in _finish(procs)]
    # one process built each entry (the corpus, the tokenizer, a token file per split); the
    # other waited for its lock and read what it wrote
    builds = {key: sum(r["builds"][key] for r in results) for key in results[0]["builds"]}
    assert builds == {"corpus": 1, "tokenizer": 1, "token_files": 3}, results
    assert results[0]["records"] == results[1]["records"] == 12  # 6 modules, 2 docstrings each
    assert results[0]["tokens"] == results[1]["tokens"]

    # the same cache, byte for byte, as one process alone builds (this one, at the same path)
    (tmp_path / "cache").rename(tmp_path / "concurrent")
    records, _ = load_records(tmp_path / "cache" / "corpus", root=tmp_path / "lib")
    dm = TextFilesDataModule(**_text_files(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    assert len(records) == results[0]["records"]
    assert {k: v.num_tokens for k, v in dm.token_files.items()} == results[0]["tokens"]
    files = _files(tmp_path / "cache")
    assert files == _files(tmp_path / "concurrent")
    assert any(p.suffix == ".bin" for p in files) and any(p.name == "tokenizer.json" for p in files)
    assert not [p for p in files if ".tmp" in p.name]  # no temporary file left behind
    for rel in files:
        if (tmp_path / "cache" / rel).is_file():
            assert filecmp.cmp(tmp_path / "cache" / rel, tmp_path / "concurrent" / rel, False), rel


# ----------------------------------------------------------------------------- processes
def test_more_cpu_processes_than_cores_is_a_one_line_error(tmp_path):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = run_cli(
        [
            "ptft.train",
            "experiment=digits_classifier",
            f"trainer.devices={cores + 1}",
            "logger=none",
            *QUIET,
        ],
        cwd=tmp_path,
        timeout=120,  # a run that started the processes would wait for ever for its peers
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: trainer.devices={cores + 1} starts {cores + 1} CPU processes, more than the "
        f"{cores} cores this machine gives the run; set trainer.devices to at most {cores}"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def _hydra_run(monkeypatch) -> None:
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))


def test_strategy_auto_on_several_devices_goes_through_ptfts_launcher(tmp_path, monkeypatch):
    # what a job of `ptft-train -m trainer.devices=2 …` builds: Lightning's auto would be its
    # own ddp, whose launcher re-runs the whole sweep in the child
    cfg = compose_train(["experiment=digits_classifier", "trainer.devices=2", *QUIET], tmp_path)
    assert cfg.trainer.strategy == "auto"
    _hydra_run(monkeypatch)
    strategy = distributed.resolve_strategy(cfg.trainer.strategy, cfg.trainer)
    assert type(strategy).__name__ == "HydraDDPStrategy"
    strategy.cluster_environment = LightningEnvironment()
    strategy.parallel_devices = [torch.device("cpu")] * 2
    strategy._configure_launcher()
    assert type(strategy.launcher) is distributed.HydraScriptLauncher
    # more nodes than one is several processes too; one device on one node stays Lightning's
    nodes = OmegaConf.merge(cfg.trainer, {"devices": 1, "num_nodes": 2})
    assert type(distributed.resolve_strategy("auto", nodes)).__name__ == "HydraDDPStrategy"
    single = OmegaConf.merge(cfg.trainer, {"devices": 1})
    assert distributed.resolve_strategy("auto", single) == "auto"
    assert distributed.resolve_strategy("ddp_spawn", cfg.trainer) == "ddp_spawn"
    # a strategy given as a node is wrapped as well, with its arguments
    node = OmegaConf.create(
        {"_target_": "lightning.pytorch.strategies.DDPStrategy", "find_unused_parameters": True}
    )
    wrapped = distributed.resolve_strategy(node, cfg.trainer)
    assert type(wrapped).__name__ == "HydraDDPStrategy"
    assert wrapped._ddp_kwargs == {"find_unused_parameters": True}


def test_strategy_auto_on_several_devices_outside_ptft_train_says_use_ddp_spawn(
    tmp_path, monkeypatch
):
    cfg = compose_train(["experiment=digits_classifier", "trainer.devices=2", *QUIET], tmp_path)
    expected = "trainer.strategy=auto with trainer.devices=2 re-runs the ptft-train command"
    with pytest.raises(ConfigError, match=expected):  # no Hydra run at all
        distributed.resolve_strategy(cfg.trainer.strategy, cfg.trainer)
    # a stage of ptft-pipeline: a Hydra run, but re-running the command would run the study
    _hydra_run(monkeypatch)
    monkeypatch.setattr(distributed, "_entry_module", lambda: "ptft.pipeline")
    with pytest.raises(ConfigError, match=expected + ".*use trainer.strategy=ddp_spawn"):
        distributed.resolve_strategy(cfg.trainer.strategy, cfg.trainer)


def test_more_gpus_than_the_machine_has_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _hydra_run(monkeypatch)
    for devices in (3, [0, 2], "0,5"):
        trainer = OmegaConf.create({"accelerator": "gpu", "devices": devices, "strategy": "ddp"})
        expected = re.escape(f"trainer.devices={trainer.devices} asks for more GPUs")
        with pytest.raises(ConfigError, match=expected):
            distributed.resolve_strategy("ddp", trainer)
    for devices in (2, -1, "auto", [0, 1]):  # every GPU there is: fine
        trainer = OmegaConf.create({"accelerator": "auto", "devices": devices})
        assert type(distributed.resolve_strategy("auto", trainer)).__name__ == "HydraDDPStrategy"
