"""Scale-out settings: strategy=ddp re-launched under Hydra (runs and multiruns), precision,
gradient accumulation and torch.compile."""

from __future__ import annotations

import csv
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from ptft.errors import ConfigError
from ptft.runs import distributed
from ptft.runs.build import build_model
from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train, run_cli


def test_ddp_inside_a_multirun_makes_exactly_one_directory_per_job(tmp_path):
    result = run_cli(
        [
            "ptft.train",
            "-m",
            "experiment=digits_classifier",
            "trainer=ddp_cpu",
            "model.optimizer.lr=1e-3,3e-3",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "callbacks.embedding_projector=null",
            *QUIET,
        ],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # no other tree under outputs/: one task, one sweep, and in it only the two jobs (and the
    # sweep's own files); the children wrote no run directory of their own
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["digits_classifier"]
    assert [p.name for p in (tmp_path / "outputs" / "digits_classifier").iterdir()] == ["multiruns"]
    (sweep,) = (tmp_path / "outputs" / "digits_classifier" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    lrs = []
    for job in (sweep / "0", sweep / "1"):
        assert sorted(p.name for p in job.iterdir() if p.is_dir()) == [
            ".hydra",
            "checkpoints",
            "tensorboard",
        ]
        assert [p.name for p in job.glob("*.log")] == ["train.log"]  # one log file, rank 0's
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        assert (job / "train.log").read_text().count("final metrics") == 1
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 4
        lrs.append(ckpt["hyper_parameters"]["optimizer"]["lr"])
        # both ranks took part: 1293 training images split over 2 processes of batch 64
        train_batches = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
        assert train_batches == 4
    assert lrs == [1e-3, 3e-3]  # each child ran its own job's point of the sweep, not the sweep
    # rank 1 logs errors only: none of its INFO records reached the console
    assert "local rank 1" not in result.stderr


# rank 1 of every job dies at its first optimizer step, while rank 0 waits in the gradient
# all-reduce
DYING_WORKER = """
import os
if os.environ.get("PTFT_DDP_WORKER") == "1":
    import torch.optim

    def _die(self, *args, **kwargs):
        os._exit(3)

    torch.optim.AdamW.step = _die
"""


def test_a_ddp_job_whose_worker_dies_fails_alone_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(DYING_WORKER)
    result = run_cli(
        [
            "ptft.train",
            "-m",
            "experiment=digits_classifier",
            "trainer=ddp_cpu",
            "model.optimizer.lr=1e-3,3e-3",
            "trainer.max_steps=4",
            "logger=none",
            "callbacks.embedding_projector=null",
            "hydra.sweep.dir=sweep",
            *QUIET,
        ],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "inject")},
        timeout=600,
    )
    # the sweep process was not killed with its first job, and each job started a worker of its own
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open()))
    assert sorted((r["job"], r["status"]) for r in rows) == [("0", "failed"), ("1", "failed")]
    for job in ("0", "1"):
        log_text = (tmp_path / "sweep" / job / "train.log").read_text()
        assert "DDP worker of local rank 1 exited with status 3" in log_text


def test_a_job_leaves_the_environment_and_threads_as_it_found_them(monkeypatch):
    # what the launcher sets in the launching process must not reach the next job of a sweep
    for key in distributed.LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    threads = torch.get_num_threads()
    with distributed.distributed_job():
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT="29500",
            LOCAL_RANK="0",
            WORLD_SIZE="2",
            NODE_RANK="0",
            OMP_NUM_THREADS="1",
        )
        torch.set_num_threads(1)
    assert {k: os.environ.get(k) for k in distributed.LAUNCH_ENV} == {
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": None,
        "NODE_RANK": None,
        "LOCAL_RANK": None,
        "WORLD_SIZE": None,
        "OMP_NUM_THREADS": None,
    }
    assert torch.get_num_threads() == threads


def test_worker_overrides_leave_out_the_sweep_and_rank_0_outputs():
    kept = [
        o
        for o in [
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweep.dir=x",
            "hydra.mode=MULTIRUN",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.run.dir=y",
            "hydra.job.chdir=true",
            "hydra.verbose=true",
            "+hydra.job.env_set.A=1",
        ]
        if distributed._keeps(o)
    ]
    assert kept == ["hydra.job.chdir=true", "hydra.verbose=true", "+hydra.job.env_set.A=1"]


def test_relaunching_strategies_are_wrapped_and_spawn_is_left_alone(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    assert distributed.resolve_strategy("ddp_spawn") == "ddp_spawn"
    assert distributed.resolve_strategy("auto") == "auto"
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    strategy = distributed.resolve_strategy("ddp_find_unused_parameters_true")
    assert (
        isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["find_unused_parameters"] is True
    )
    assert type(strategy)._configure_launcher is not DDPStrategy._configure_launcher


@pytest.mark.parametrize(("trainer", "base"), [("ddp", DDPStrategy), ("fsdp", FSDPStrategy)])
def test_gpu_trainer_configs_get_the_relaunching_strategy(trainer, base, tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == -1
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    strategy = distributed.resolve_strategy(cfg.trainer.strategy)
    assert isinstance(strategy, base) and type(strategy).__name__ == f"Hydra{base.__name__}"


def test_strategy_ddp_outside_ptft_train_is_a_one_line_error(tmp_path):
    cfg = compose_train(
        ["experiment=digits_classifier", "trainer=ddp_cpu", "logger=none", *QUIET], tmp_path
    )
    with pytest.raises(
        ConfigError, match="trainer.strategy=ddp re-runs the ptft-train command.*ddp_spawn"
    ):
        train(cfg)


def test_deepspeed_without_its_package_says_how_to_install(monkeypatch):
    try:
        import deepspeed  # noqa: F401

        pytest.skip("DeepSpeed is installed")
    except ImportError:
        pass
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    with pytest.raises(ConfigError, match=r"needs DeepSpeed: pip install 'ptft\[deepspeed\]'"):
        distributed.resolve_strategy("deepspeed_stage_2")


def test_16_mixed_runs_the_model_in_half_precision_and_keeps_fp32_weights(tmp_path):
    # fp16 autocast with loss scaling on GPUs; on CPU Lightning runs it as bf16-mixed (with a
    # warning)
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "model/backbone=mlp",
            "model.augment=null",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.precision=16-mixed",
            "logger=none",
            "test=false",
            *QUIET,
        ],
        tmp_path,
    )
    seen: list[torch.dtype] = []  # output dtypes of every Linear layer run under autocast

    def spy(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear) and torch.is_autocast_enabled("cpu"):
            seen.append(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        metrics = train(cfg)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float16 if torch.cuda.is_available() else torch.bfloat16}
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(
        v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def _one_sgd_step(tmp_path, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "model/backbone=mlp",
            "model.augment=null",
            "model.scheduler=null",
            "model.optimizer._target_=torch.optim.SGD",
            "model.optimizer.lr=0.5",
            "model.optimizer.weight_decay=0",
            f"data.batch_size={batch_size}",
            f"trainer.accumulate_grad_batches={accumulate}",
            "trainer.max_steps=1",
            "train=true",
            "test=false",
            "logger=none",
            "callbacks.model_checkpoint.save_top_k=0",
            *QUIET,
        ],
        tmp_path,
    )
    train(cfg)
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_two_accumulated_batches_of_n_make_the_step_of_one_batch_of_2n(tmp_path):
    accumulated = _one_sgd_step(tmp_path / "acc", batch_size=32, accumulate=2)
    whole = _one_sgd_step(tmp_path / "whole", batch_size=64, accumulate=1)
    L.seed_everything(
        42, verbose=False
    )  # the weights train() starts from (it seeds with cfg.seed=42)
    initial = build_model(
        compose_train(["experiment=digits_classifier", "model/backbone=mlp"], tmp_path).model
    )
    moved = 0
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(value, initial.state_dict()[name])
    assert (
        moved > 0
    )  # the step did change the weights (the comparison is not of two untouched copies)


def test_compile_compiles_the_backbone_in_place_with_the_same_values_and_keys(tmp_path):
    overrides = ["experiment=digits_classifier", "model/backbone=mlp", "model.augment=null"]
    torch.manual_seed(0)
    plain = build_model(compose_train(overrides, tmp_path).model)
    torch.manual_seed(0)
    compiled = build_model(compose_train([*overrides, "model.compile=true"], tmp_path).model)
    assert (
        compiled.backbone._compiled_call_impl is not None
        and plain.backbone._compiled_call_impl is None
    )
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." keys
    x = torch.rand(8, 1, 8, 8)
    torch.testing.assert_close(compiled.backbone(x), plain.backbone(x))
