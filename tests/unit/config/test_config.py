"""Configs: every option composes and its ``_target_`` nodes fit the code they name, and bad
overrides fail at once, naming the key (and the valid keys), before anything is written."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptft.cli import config_dir
from ptft.config import schemas
from ptft.config.validate import validate
from tests.helpers import compose_train, run_cli

CONF = Path(config_dir())
#: values for the keys an option leaves to the command line (???)
REQUIRED = {
    "text_files": ["data.files=notes/*.txt"],
    "hf_text": ["data.path=wikitext"],
    "image_folder": ["data.root=images", "data.num_classes=3"],
    # its num_classes is counted from the rows when the config resolves
    "text_classification": [f"data.files={Path(__file__).parent / 'labelled.jsonl'}"],
}


@pytest.mark.parametrize(
    "group, options",
    [
        (g, sorted(p.stem for p in (CONF / g).glob("*.yaml")))
        for g in ("data", "model", "trainer", "logger", "callbacks", "debug", "experiment")
    ],
)
def test_every_option_of_every_group_composes_and_validates(group, options, tmp_path):
    for option in options:
        cfg = compose_train([f"{group}={option}", *REQUIRED.get(option, [])], tmp_path)
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.task_name
        validate(cfg)  # every key is an argument of the code its _target_ names


def test_model_and_data_nodes_take_keys_their_yaml_does_not_list(tmp_path):
    # open nodes: a constructor argument left to its default needs no "+" on the command line
    cfg = compose_train(
        ["model.projection_dim=32", "model.backbone.dropout=0.1", "data.num_workers=1"], tmp_path
    )
    assert (cfg.model.projection_dim, cfg.model.backbone.dropout, cfg.data.num_workers) == (
        32,
        0.1,
        1,
    )
    validate(cfg)


def test_trainer_schema_names_real_trainer_arguments():
    from lightning import Trainer

    trainer_args = set(inspect.signature(Trainer.__init__).parameters)
    assert set(schemas.TrainerConfig.__dataclass_fields__) - {"_target_"} <= trainer_args


def test_checkpoint_monitor_follows_the_model(tmp_path):
    for model, metric, mode in [("simclr", "val/loss", "min"), ("classifier", "val/acc", "max")]:
        cfg = compose_train([f"model={model}"], tmp_path)
        assert cfg.callbacks.model_checkpoint.monitor == metric == cfg.optimized_metric
        assert cfg.callbacks.model_checkpoint.mode == mode


SIMCLR_KEYS = (
    "augment, backbone, compile, input_shape, knn, monitor, monitor_mode, num_classes, "
    "online_probe, optimizer, pretrained, projection_dim, projection_hidden_dim, scheduler, "
    "temperature"
)


@pytest.mark.parametrize(
    "override, message",
    [
        # the run-level schemas (Hydra's own message, naming the key)
        ("trainer.max_epoch=3", "Key 'max_epoch' not in 'TrainerConfig'"),
        ("trainer.max_epochs=abc", "could not be converted to Integer"),
        # the _target_ nodes, checked against the code
        (
            "model.temperatur=0.1",
            "model.temperatur: ptft.objectives.simclr.SimCLR takes no such argument; "
            f"valid keys: {SIMCLR_KEYS}",
        ),
        ("data.batch_size=1.5", "data.batch_size=1.5: expected int, got float"),
        ("model.temperature=hot", "model.temperature=hot: expected float, got str"),
    ],
)
def test_bad_override_exits_nonzero_naming_the_key(override, message, tmp_path):
    result = run_cli(["ptft.train", override], cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # nothing was written


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.knn.kk=3"], "model.knn.kk: not a key of model.knn; valid keys: k, temperature"),
        (["model.knn.k=many"], "model.knn.k=many: expected int, got str"),
        (
            ["model.backbone.chanels=[8]"],
            "model.backbone.chanels: ptft.nn.cnn.CNN takes no such argument; "
            "valid keys: channels, dropout",
        ),
        (
            ["model.backbone.input_shape=[1,8,8]"],
            "model.backbone.input_shape: ptft passes it itself",
        ),
        (
            ["model.augment.sheer=3"],
            "model.augment.sheer: not a key of model.augment; valid keys: degrees,",
        ),
        (
            ["model.optimizer.momentum=0.9"],
            "model.optimizer.momentum: torch.optim.AdamW takes no such",
        ),
        (
            ["model=classifier", "model.lr_scaling.base_batch=64.5"],
            "model.lr_scaling.base_batch=64.5: expected int",
        ),
        (
            ["model/scheduler=constant", "model.scheduler.warmup_fraction=0.1"],
            "valid keys: warmup_steps",
        ),
        (
            ["callbacks.model_checkpoint.save_top_k=best"],
            "callbacks.model_checkpoint.save_top_k=best: expected int",
        ),
        (
            ["logger=csv", "logger.csv.flush_every=5"],
            "logger.csv.flush_every: lightning.pytorch.loggers.CSVLogger",
        ),
        (["data=text_files"], "data.files has no value (???)"),
    ],
)
def test_bad_target_keys_and_values_are_named_in_one_line(overrides, message, tmp_path):
    from ptft.errors import ConfigError

    cfg = compose_train(overrides, tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_what_a_run_leaves_to_the_code_is_no_error(tmp_path):
    cfg = compose_train(
        [
            "model.optimizer.momentum=null",  # dropped before the call: the optimizer's default
            "model.knn.temperature=null",  # a TypedDict key that may be None
            "model.online_probe.enabled=true",
            f"model.pretrained={tmp_path}",  # run settings, not constructor arguments
            "model.compile=true",
            # TensorBoardLogger hands **kwargs on to SummaryWriter
            "logger.tensorboard.flush_secs=5",
        ],
        tmp_path,
    )
    validate(cfg)


def test_help_and_cfg_job_do_not_import_torch(tmp_path):
    code = (
        "import runpy, sys\n"
        "sys.argv = ['ptft-train', '--cfg', 'job', 'experiment=digits_classifier']\n"
        "try:\n    runpy.run_module('ptft.train', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "_target_: ptft.tasks.classifier.Classifier" in result.stdout
    help_text = run_cli(["ptft.train", "--help"], cwd=tmp_path)
    assert (
        help_text.returncode == 0
        and "experiment: digits_autoencoder, digits_classifier, digits_simclr" in help_text.stdout
    )
