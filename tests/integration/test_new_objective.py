"""A new objective is one Python module and one yaml, with no other edit anywhere: written here
into a temporary directory (on ``sys.path``) and a temporary config directory, it trains with
ptft's ``train()``, has its keys checked against its constructor, and hands its backbone to
the classifier through ``model.pretrained=``."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ptft.cli import config_dir
from ptft.runs.build import build_model, plain
from ptft.runs.fit import train
from tests.helpers import QUIET, run_cli

MODULE = '''
"""Predict the mean: a toy denoising objective. The backbone sees a noisy image and a linear
head predicts the clean image's mean brightness (no labels)."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptft.modules.backbone_module import BackboneModule


class MeanPredictor(BackboneModule):
    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        noise_std: float = 0.1,
    ) -> None:
        super().__init__(backbone, input_shape, optimizer, scheduler)
        self.save_hyperparameters()
        self.noise_std = noise_std
        self.head = nn.Linear(self.backbone.out_dim, 1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.noise_std * torch.randn_like(x)
        return F.mse_loss(self.head(self.backbone(noisy)).squeeze(1), x.mean(dim=(1, 2, 3)))

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch[0])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.loss(batch[0]))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.loss(batch[0]))
'''

YAML = """\
# Predict the mean of a noisy image (mean_objective.MeanPredictor): model.noise_std
defaults:
  - common@_here_: base
  - backbone: cnn
  - scheduler: warmup_cosine
  - _self_

_target_: mean_objective.MeanPredictor
noise_std: 0.2
"""

FAST = ["trainer.max_steps=6", "trainer.val_check_interval=3", "logger=none", *QUIET]


@pytest.fixture
def new_objective(tmp_path, monkeypatch) -> Path:
    """The module on ``sys.path`` and its yaml in a config directory of its own; returns that."""
    code, conf = tmp_path / "code", tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    code.mkdir()
    (code / "mean_objective.py").write_text(textwrap.dedent(MODULE))
    (conf / "model" / "mean_predictor.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    return conf


def compose_with(conf: Path, overrides: list[str], output_dir: Path):
    """``train.yaml`` composed with the extra config directory on Hydra's search path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"hydra.searchpath=[file://{conf}]",
                *overrides,
                f"paths.output_dir={output_dir}",
            ],
        )


def test_a_new_objective_trains_validates_and_hands_off(new_objective, tmp_path):
    # (a) it trains, with ptft's own train(), on a backbone of its own size
    run = tmp_path / "pretrain"
    cfg = compose_with(
        new_objective, ["model=mean_predictor", "model.backbone.channels=[8,16]", *FAST], run
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["noise_std"] == 0.2
    assert ckpt["ptft_backbone"]["module"] == "mean_objective.MeanPredictor"
    assert ckpt["ptft_backbone"]["config"]["channels"] == [8, 16]

    # (b) a misspelled key fails at once, in one line that lists its keys; nothing is written
    cwd = tmp_path / "cli"
    cwd.mkdir()
    result = run_cli(
        [
            "ptft.train",
            "--config-dir",
            str(new_objective),
            "model=mean_predictor",
            "model.noise_sdt=0.3",
        ],
        cwd=cwd,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        "error: model.noise_sdt: mean_objective.MeanPredictor takes no such argument; valid keys: "
        "backbone, compile, input_shape, monitor, monitor_mode, noise_std, optimizer, pretrained, "
        "scheduler\n"
    ) in result.stderr
    assert not (cwd / "outputs").exists()

    # (c) model.pretrained= hands its backbone (architecture and weights) to the classifier
    cfg = compose_with(
        new_objective,
        ["experiment=digits_classifier", f"model.pretrained={run}", *FAST],
        tmp_path / "finetune",
    )
    classifier = build_model(plain(cfg.model))
    assert classifier.backbone_config["channels"] == [8, 16]
    for name, tensor in classifier.backbone.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["state_dict"][f"backbone.{name}"], rtol=0, atol=0)
    assert train(cfg)["test/acc"] >= 0.0
