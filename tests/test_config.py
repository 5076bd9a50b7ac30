"""Configs: every option composes, schemas match the classes they configure, and bad
overrides fail at once, naming the key, before torch is imported."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptft import config as schemas
from ptft.cli import config_dir
from ptft.nn.backbone import locate

from .conftest import compose_train, run_cli

CONF = Path(config_dir())
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
#: model-config keys that are run settings, not constructor arguments
RUN_KEYS = {"_target_", "monitor", "monitor_mode", "pretrained", "compile"}


@pytest.mark.parametrize(
    "group, options",
    [
        (g, sorted(p.stem for p in (CONF / g).glob("*.yaml")))
        for g in ("data", "model", "trainer", "logger", "callbacks", "debug", "experiment")
    ],
)
def test_every_option_of_every_group_composes(group, options, tmp_path):
    for option in options:
        cfg = compose_train([f"{group}={option}"], tmp_path)
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.task_name


@pytest.mark.parametrize(
    "schema, target",
    [
        (schemas.SimCLRConfig, "ptft.objectives.simclr.SimCLR"),
        (schemas.AutoencoderConfig, "ptft.objectives.autoencoder.Autoencoder"),
        (schemas.ClassifierConfig, "ptft.tasks.classifier.Classifier"),
        (schemas.CNNConfig, "ptft.nn.cnn.CNN"),
        (schemas.MLPConfig, "ptft.nn.mlp.MLP"),
        (schemas.ImageDataConfig, "ptft.data.digits.DigitsDataModule"),
        (schemas.TorchvisionDataConfig, "ptft.data.torchvision.TorchvisionDataModule"),
        (schemas.AugmentConfig, "ptft.data.augment.Augment"),
        (schemas.TextDataConfig, "ptft.data.text.PydocTextDataModule"),
        (schemas.TransformerConfig, "ptft.nn.transformer.Transformer"),
        (schemas.CausalLMConfig, "ptft.objectives.causal_lm.CausalLM"),
        (schemas.MaskedLMConfig, "ptft.objectives.masked_lm.MaskedLM"),
        (schemas.TextFilesDataConfig, "ptft.data.text_files.TextFilesDataModule"),
        (schemas.HFTextDataConfig, "ptft.data.hf_text.HFTextDataModule"),
        (schemas.PydocPackageDataConfig, "ptft.data.pydoc_tasks.PydocPackageDataModule"),
        (schemas.PydocNamesDataConfig, "ptft.data.pydoc_tasks.PydocNamesDataModule"),
        (schemas.SequenceClassifierConfig, "ptft.tasks.sequence_classifier.SequenceClassifier"),
        (schemas.SequenceGeneratorConfig, "ptft.tasks.sequence_generator.SequenceGenerator"),
    ],
)
def test_schema_fields_are_the_constructor_arguments(schema, target):
    cls = locate(target)
    # a constructor's named arguments, and its base's when it forwards **kwargs to it
    params: set[str] = set()
    for c in cls.__mro__:
        if "__init__" not in vars(c) or not c.__module__.startswith("ptft"):
            continue
        signature = inspect.signature(c.__init__).parameters.values()
        params |= {p.name for p in signature if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in signature):
            break
    params -= {"with_labels"}  # set by the run from the model, never by the user
    fields = set(schema.__dataclass_fields__) - RUN_KEYS
    if target.endswith(("CNN", "MLP", "Transformer")):
        params -= {"input_shape"}  # comes from the data
    assert fields == params


def test_trainer_schema_names_real_trainer_arguments():
    from lightning import Trainer

    trainer_args = set(inspect.signature(Trainer.__init__).parameters)
    assert set(schemas.TrainerConfig.__dataclass_fields__) - {"_target_"} <= trainer_args


def test_checkpoint_monitor_follows_the_model(tmp_path):
    for model, metric, mode in [("simclr", "val/loss", "min"), ("classifier", "val/acc", "max")]:
        cfg = compose_train([f"model={model}"], tmp_path)
        assert cfg.callbacks.model_checkpoint.monitor == metric == cfg.optimized_metric
        assert cfg.callbacks.model_checkpoint.mode == mode


@pytest.mark.parametrize(
    "override, key, why",
    [
        ("trainer.max_epoch=3", "trainer.max_epoch", "not in"),
        ("model.temperatur=0.1", "model.temperatur", "not in"),
        ("trainer.max_epochs=abc", "trainer.max_epochs", "could not be converted to Integer"),
        ("data.batch_size=1.5", "data.batch_size", "could not be converted to Integer"),
        ("model.temperature=hot", "model.temperature", "could not be converted to Float"),
    ],
)
def test_bad_override_exits_nonzero_naming_the_key(override, key, why, tmp_path):
    result = run_cli(["ptft.train", override], cwd=tmp_path)
    assert result.returncode != 0
    assert key in result.stderr and why in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was written


def test_help_and_cfg_job_do_not_import_torch(tmp_path):
    code = (
        "import runpy, sys\n"
        "sys.argv = ['ptft-train', '--cfg', 'job', 'experiment=digits_classifier']\n"
        "try:\n    runpy.run_module('ptft.train', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "_target_: ptft.tasks.classifier.Classifier" in result.stdout
    help_text = run_cli(["ptft.train", "--help"], cwd=tmp_path)
    assert help_text.returncode == 0 and "experiment: digits_autoencoder, digits_classifier, digits_simclr" in help_text.stdout
