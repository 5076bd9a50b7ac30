"""Bad input is one line, ``error: ...`` on stderr, exit status 2, before Hydra starts a run:
sizes that must be positive, SimCLR's temperature, eval and generate without a checkpoint, a
negative learning rate, a text backbone handed to image data, and Hydra's own configuration
errors (an override that does not parse, an unknown key or option) alike.

The entry points run in-process, as their console scripts do, with Hydra's run replaced by a
marker: an error that reaches it was not caught before the run."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from ptft import cli
from ptft.config.bounds import NonEmptyStr, PositiveInt, Probability, Range, violation
from ptft.data.digits import DigitsDataModule
from ptft.errors import ConfigError
from ptft.objectives.losses import nt_xent
from ptft.objectives.simclr import SimCLR
from ptft.runs.build import build_model, plain
from tests.helpers import QUIET, compose_train

#: the cores this process may run on
CORES = len(os.sched_getaffinity(0))
CNN = {"_target_": "ptft.nn.cnn.CNN", "channels": [4]}
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}


class HydraStarted(Exception):
    """Hydra was asked to run: the check before the run let the command line through."""


@pytest.fixture
def entry(monkeypatch, capsys, tmp_path):
    """``entry("train", *overrides)`` runs ``ptft.train.main()`` as ``ptft-train`` would, in
    ``tmp_path``, and returns ``(exit status, stderr)``; Hydra's run is never started."""

    def hydra_run(**kwargs):
        raise HydraStarted(kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.modules["hydra.main"], "_run_hydra", hydra_run)

    def run(command: str, *overrides: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [f"ptft-{command}", *overrides])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(f"ptft.{command}").main()
        return exit_.value.code, capsys.readouterr().err

    return run


def one_line(result: tuple[int, str]) -> str:
    """The message of a refused command line: status 2, exactly one line on stderr."""
    status, err = result
    assert status == cli.CONFIG_ERROR, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len("error: ") : -1]


@pytest.fixture
def checkpoint_file(tmp_path) -> Path:
    """A file that exists where a checkpoint is asked for (what it holds is read when the run
    starts, after these checks)."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not read by the checks before the run")
    return path


# ------------------------------------------------------------------ sizes and bounds
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.batch_size=0"], "data.batch_size=0: out of range: give a value > 0"),
        (["data.batch_size=-4"], "data.batch_size=-4: out of range: give a value > 0"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0: out of range: give a value > 0"),
        (["data.num_workers=-1"], "data.num_workers=-1: out of range: give a value >= 0"),
        (["data.input_shape=[1,0,8]"], "data.input_shape=[1, 0, 8]: item 1 (0) out of range"),
        (
            ["experiment=pydoc_gpt", "data.batch_size=0"],
            "data.batch_size=0: out of range: give a value > 0",
        ),
        (
            ["experiment=pydoc_package_classifier", "data.max_length=0"],
            "data.max_length=0: out of range: give a value > 0",
        ),
        (
            ["model/backbone=mlp", "model.backbone.hidden_dims=[64,0]"],
            "model.backbone.hidden_dims=[64, 0]: item 1 (0) out of range: give a value > 0",
        ),
        (["trainer.max_epochs=-5"], "trainer.max_epochs=-5: out of range: give a value >= -1"),
        (
            ["trainer.accumulate_grad_batches=0"],
            "trainer.accumulate_grad_batches=0: out of range: give a value > 0",
        ),
        (["seed=-1"], "seed=-1: out of range: give a value in [0, 4294967296)"),
        (["paths.log_dir="], "paths.log_dir='': is empty"),
    ],
)
def test_a_size_out_of_range_is_one_line_naming_the_key(entry, overrides, message):
    assert one_line(entry("train", *overrides)).startswith(message)


def test_an_error_raised_while_a_resolver_counts_classes_is_ptfts_own_line(entry, tmp_path):
    # ${ptft.num_classes:} raises inside OmegaConf's resolution, which wraps the error twice
    message = one_line(entry("train", "experiment=digits_classifier", "data=image_folder"))
    assert message == (
        "data.root (a folder per class) or data.path (a Hugging Face data set) is not set; "
        "give one, e.g. data.root=DIR"
    )
    missing = tmp_path / "no_such_dir"
    message = one_line(
        entry("train", "experiment=digits_classifier", "data=image_folder", f"data.root={missing}")
    )
    assert message == f"data.root={missing}: no such directory"


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Lightning checks these only when it builds the Trainer (after the run directory is
        # made), and ignores val_check_interval altogether under fast_dev_run
        (
            [f"trainer.devices={CORES + 1}", "trainer.accelerator=cpu"],
            f"trainer.devices={CORES + 1} starts {CORES + 1} CPU processes, more than the {CORES}",
        ),
        (
            ["debug=fdr", "trainer.val_check_interval=abc"],
            "trainer.val_check_interval=abc: give a number of training batches",
        ),
        (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5: give a number"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: give a number"),
    ],
)
def test_trainer_settings_of_several_types_are_checked_before_the_run(entry, overrides, message):
    assert one_line(entry("train", *overrides)).startswith(message)
    assert not (Path.cwd() / "outputs").exists()  # nothing written: Hydra never started


@pytest.mark.parametrize("interval", ["null", "100", "0.25", "1.0"])
def test_valid_validation_intervals_reach_the_run(entry, interval):
    with pytest.raises(HydraStarted):
        entry("train", f"trainer.val_check_interval={interval}")


def test_eval_checks_the_data_it_is_given_too(entry, checkpoint_file):
    message = one_line(
        entry("eval", f"ckpt_path={checkpoint_file}", "data=digits", "data.batch_size=0")
    )
    assert message == "data.batch_size=0: out of range: give a value > 0"


def test_the_datamodule_refuses_a_size_that_is_not_positive():
    for key in ("batch_size", "eval_batch_size"):
        for value in (0, -3):
            with pytest.raises(ConfigError) as err:
                DigitsDataModule(**{key: value})
            assert str(err.value) == f"data.{key}={value}: out of range: give a value > 0"
    # the smallest valid size serves batches of that size
    data = DigitsDataModule(batch_size=1, eval_batch_size=1)
    data.setup("fit")
    assert len(next(iter(data.train_dataloader()))[0]) == 1


def test_bounds_read_from_annotations():
    assert violation(0, PositiveInt) == "out of range: give a value > 0"
    assert violation(1, PositiveInt) is None
    assert violation(None, PositiveInt | None) is None
    assert violation(1.5, Probability) == "out of range: give a value in [0, 1]"
    assert violation(float("nan"), Probability) is not None  # NaN is in no range
    assert violation([0.5, 1.0], list[Probability]) is None
    assert violation("", NonEmptyStr) is not None and violation("x", NonEmptyStr) is None
    assert str(Range(gt=0, lt=1)) == "in (0, 1)" and str(Range(ge=-1)) == ">= -1"
    assert violation("abc", PositiveInt) is None  # a wrong type is the type check's business


# ------------------------------------------------------------------- SimCLR's temperature
def test_simclr_temperature_zero_is_one_line_before_the_run(entry):
    assert one_line(entry("train", "model.temperature=0")) == (
        "model.temperature=0: out of range: give a value > 0"
    )


@pytest.mark.parametrize("temperature", [0, 0.0, -0.5])
def test_simclr_refuses_a_temperature_that_is_not_positive(temperature):
    with pytest.raises(ConfigError) as err:
        SimCLR(CNN, [1, 8, 8], ADAMW, temperature=temperature)
    assert str(err.value) == f"model.temperature={temperature}: out of range: give a value > 0"


def test_simclr_takes_a_small_positive_temperature_into_its_loss():
    torch.manual_seed(0)
    model = SimCLR(CNN, [1, 8, 8], ADAMW, temperature=0.01)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.equal(model.contrastive_loss(z1, z2), nt_xent(z1, z2, 0.01))


# ----------------------------------------------------------- eval and generate: ckpt_path
@pytest.mark.parametrize("command", ["eval", "generate"])
def test_eval_and_generate_without_a_checkpoint_say_so_in_one_line(entry, command):
    assert one_line(entry(command)) == "ckpt_path is required (it is ???): pass ckpt_path=..."
    assert one_line(entry(command, "ckpt_path=missing.ckpt")) == (
        "ckpt_path=missing.ckpt: no such checkpoint file"
    )
    assert one_line(entry(command, "ckpt_path=")) == "ckpt_path='': is empty; give a path"


def test_generate_checks_its_sampling_settings_before_the_run(entry, checkpoint_file):
    ckpt = f"ckpt_path={checkpoint_file}"
    assert one_line(entry("generate", ckpt, "prompt=x", "top_p=1.5")) == (
        "top_p=1.5: out of range: give a value in (0, 1]"
    )
    assert one_line(entry("generate", ckpt, "prompt=x", "num_samples=0")).startswith(
        "num_samples=0: out of range"
    )
    assert one_line(entry("generate", ckpt)) == cli.NO_PROMPT


def test_a_value_left_missing_inside_the_run_is_one_line(capsys):
    def task():
        raise MissingMandatoryValue("Missing mandatory value: ckpt_path")

    with pytest.raises(SystemExit) as exit_:
        cli.one_line_errors(task)()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: Missing mandatory value: ckpt_path\n"


# ------------------------------------------------------------------ the learning rate
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.optimizer.lr=-1"], "model.optimizer.lr=-1: Invalid learning rate: -1"),
        (
            ["model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=-0.1"],
            "model.optimizer.lr=-0.1: Invalid learning rate: -0.1 (torch.optim.SGD refuses it)",
        ),
        (
            ["model.optimizer.weight_decay=-0.5"],
            "model.optimizer.weight_decay=-0.5: Invalid weight_decay value: -0.5",
        ),
        (["model.optimizer.lr=null"], "model.optimizer.lr is not set: give the base learning"),
    ],
)
def test_a_negative_learning_rate_is_named_before_the_run(entry, overrides, message):
    assert one_line(entry("train", *overrides)).startswith(message)


@pytest.mark.parametrize("lr", [-1, -1e-4, None, "fast"])
def test_the_model_refuses_a_negative_learning_rate(lr):
    with pytest.raises(ConfigError) as err:
        SimCLR(CNN, [1, 8, 8], {**ADAMW, "lr": lr})
    shown = "null" if lr is None else lr
    assert str(err.value).startswith(f"model.optimizer.lr={shown}: the learning rate must be")
    assert SimCLR(CNN, [1, 8, 8], {**ADAMW, "lr": 0}).optimizer_config["lr"] == 0


# -------------------------------------------------------- a text backbone on images
def test_a_gpt_backbone_handed_to_image_data_says_so(tmp_path):
    from ptft.runs.fit import train

    gpt = build_model(plain(compose_train(["experiment=pydoc_gpt"], tmp_path / "gpt").model))
    checkpoint = {"state_dict": gpt.state_dict(), "hyper_parameters": dict(gpt.hparams)}
    gpt.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "gpt.ckpt")
    cfg = compose_train(
        ["experiment=digits_classifier", f"model.pretrained={tmp_path / 'gpt.ckpt'}", *QUIET],
        tmp_path / "finetune",
    )
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert "pretrained on token sequences (input_shape [128])" in message
    assert "this run's data are images (input_shape [1, 8, 8])" in message
    assert "sequence length" not in message and "\n" not in message
    assert not (tmp_path / "finetune").exists()  # refused before anything is written


# ------------------------------------------------------ Hydra's errors: status 2, one line
@pytest.mark.parametrize(
    "argv, message",
    [
        (["foo=1"], "Could not override 'foo'. To append to your config use +foo=1"),
        (["trainer.max_epoch=3"], "Key 'max_epoch' not in 'TrainerConfig'"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc (Value 'abc' of type 'str' could"),
        (["model=nosuch"], "Could not find 'model/nosuch'. Available options in 'model': auto"),
        (["experiment=nosuch"], "experiment=nosuch: experiment has no option 'nosuch'; choose"),
        (["debug=fdrr"], "debug=fdrr: debug has no option 'fdrr'; choose from fdr,"),
        (["model.x=[1"], "model.x=[1: no viable alternative at input '[1'"),
        (["--cfg", "job", "foo=1"], "Could not override 'foo'."),
        (["-m", "foo=1", "model.optimizer.lr=1e-3,2e-3"], "Could not override 'foo'."),
        (["-m", "experiment=digits_simclr,nosuch"], "experiment has no option 'nosuch'"),
    ],
)
def test_hydra_configuration_errors_are_one_line_with_status_2(entry, argv, message):
    assert message in one_line(entry("train", *argv))


def test_hydra_errors_inside_a_run_exit_2_and_other_errors_keep_hydras_report(capsys):
    from hydra._internal import utils

    def compose_error():
        raise ConfigCompositionException("Could not override 'foo'.\nTo append use +foo=1")

    def crash():
        raise RuntimeError("a failure during the run")

    with cli.hydra_config_errors(), pytest.raises(SystemExit) as exit_:
        utils.run_and_report(compose_error)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: Could not override 'foo'. To append use +foo=1\n")
    with cli.hydra_config_errors(), pytest.raises(SystemExit) as exit_:
        utils.run_and_report(crash)
    assert exit_.value.code == 1 and "RuntimeError: a failure during the run" in (
        capsys.readouterr().err
    )
    assert utils.run_and_report.__module__ == "hydra._internal.utils"  # put back


def test_help_and_a_valid_cfg_job_still_reach_hydra(entry):
    for argv in (["--help"], ["--cfg", "job", "experiment=digits_classifier"]):
        with pytest.raises(HydraStarted):
            entry("train", *argv)
