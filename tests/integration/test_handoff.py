"""The pretrain → fine-tune handoff: weights and architecture from the checkpoint, a
new head, a frozen linear probe, and a clear error for each kind of bad checkpoint."""

from __future__ import annotations

import pytest
import torch

from ptft.errors import ConfigError
from ptft.runs.build import build_model, plain
from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train, run_cli


def classifier_cfg(tmp_path, *overrides):
    return compose_train(
        ["experiment=digits_classifier", "logger=none", *QUIET, *overrides], tmp_path
    )


def test_backbone_weights_and_architecture_come_from_the_checkpoint(simclr_run, tmp_path):
    ckpt = torch.load(simclr_run / "checkpoints" / "last.ckpt", weights_only=True)
    # the config asks for another architecture: the checkpoint's wins
    cfg = classifier_cfg(tmp_path, f"model.pretrained={simclr_run}", "model.backbone.channels=[8]")
    model = build_model(plain(cfg.model))
    assert model.backbone_config == ckpt["ptft_backbone"]["config"]
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["state_dict"][f"backbone.{name}"], rtol=0, atol=0)
    assert not any(k.startswith("head.") for k in ckpt["state_dict"])  # the head is new
    assert model.hparams["backbone"] == ckpt["ptft_backbone"]["config"]  # and saved for later loads


def test_handoff_reports_what_it_loaded(simclr_run, tmp_path, caplog):
    cfg = classifier_cfg(tmp_path, f"model.pretrained={simclr_run / 'checkpoints' / 'last.ckpt'}")
    with caplog.at_level("INFO", logger="ptft.handoff"):
        build_model(plain(cfg.model))
    ckpt = torch.load(simclr_run / "checkpoints" / "last.ckpt", weights_only=True)
    n_backbone = sum(k.startswith("backbone.") for k in ckpt["state_dict"])
    n_projector = sum(k.startswith("projector.") for k in ckpt["state_dict"])
    assert f"loaded {n_backbone} backbone tensors; new: 2 tensors (head)" in caplog.text
    assert f"skipped from the checkpoint: {n_projector} tensors (projector)" in caplog.text


def test_linear_probe_leaves_the_backbone_unchanged(simclr_run, tmp_path):
    cfg = classifier_cfg(
        tmp_path,
        f"model.pretrained={simclr_run}",
        "model.finetune=linear_probe",
        "trainer.max_steps=15",
        "trainer.val_check_interval=5",
        "test=false",
    )
    before = torch.load(simclr_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    train(cfg)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)  # batch-norm statistics are checked too
    for k in backbone:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    head_init = build_model(plain(cfg.model)).state_dict()["head.1.weight"]
    assert not torch.equal(after["head.1.weight"], head_init)  # while the head did learn


def test_full_finetune_changes_the_backbone(simclr_run, tmp_path):
    cfg = classifier_cfg(
        tmp_path,
        f"model.pretrained={simclr_run}",
        "trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "test=false",
    )
    before = torch.load(simclr_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    train(cfg)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(
        after["backbone.stages.0.0.weight"], before["backbone.stages.0.0.weight"]
    )


def test_the_autoencoders_encoder_hands_off_to_the_classifier(tmp_path, caplog):
    """The vision study's autoencoder arm: the classifier takes its encoder (the backbone),
    weights and architecture, and leaves its decoder."""
    pretrain_dir = tmp_path / "autoencoder"
    train(
        compose_train(
            [
                "experiment=digits_autoencoder",
                "trainer.max_steps=2",
                "trainer.limit_val_batches=0",
                "test=false",
                "logger=none",
                *QUIET,
            ],
            pretrain_dir,
        )
    )
    ckpt = torch.load(pretrain_dir / "checkpoints" / "last.ckpt", weights_only=True)
    decoder = [k for k in ckpt["state_dict"] if k.startswith("decoder.")]
    assert decoder  # the autoencoder has one; the classifier must not take it
    cfg = classifier_cfg(tmp_path / "finetune", f"model.pretrained={pretrain_dir}")
    with caplog.at_level("INFO", logger="ptft.handoff"):
        model = build_model(plain(cfg.model))
    assert model.backbone_config == ckpt["ptft_backbone"]["config"]
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["state_dict"][f"backbone.{name}"], rtol=0, atol=0)
    assert f"skipped from the checkpoint: {len(decoder)} tensors (decoder)" in caplog.text


def test_missing_path(tmp_path):
    cfg = classifier_cfg(tmp_path, f"model.pretrained={tmp_path / 'nope.ckpt'}")
    with pytest.raises(ConfigError, match="nope.ckpt: no such file or directory"):
        build_model(plain(cfg.model))


def test_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    cfg = classifier_cfg(tmp_path, f"model.pretrained={bogus}")
    with pytest.raises(ConfigError, match="is not a loadable PyTorch checkpoint"):
        build_model(plain(cfg.model))
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(ConfigError, match="is not a Lightning checkpoint"):
        build_model(plain(cfg.model))


def test_checkpoint_without_a_backbone(tmp_path):
    file = tmp_path / "head_only.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, file)
    cfg = classifier_cfg(tmp_path, f"model.pretrained={file}")
    with pytest.raises(ConfigError, match="has no backbone"):
        build_model(plain(cfg.model))


def test_directory_without_a_checkpoint(tmp_path):
    cfg = classifier_cfg(tmp_path, f"model.pretrained={tmp_path}")
    with pytest.raises(ConfigError, match="is a directory with no checkpoint"):
        build_model(plain(cfg.model))


def test_backbone_that_does_not_fit(simclr_run, tmp_path):
    # three-channel inputs cannot use a backbone pretrained on grey digits
    cfg = classifier_cfg(tmp_path, f"model.pretrained={simclr_run}", "model.input_shape=[3,8,8]")
    with pytest.raises(
        ConfigError,
        match=r"does not fit this model \(shape mismatch: stages.0.0.weight \[32, 1, 3, 3\] "
        r"in the checkpoint vs \[32, 3, 3, 3\] here\); "
        r"it was pretrained on inputs of shape \[1, 8, 8\], this data has \[3, 8, 8\]",
    ):
        build_model(plain(cfg.model))


def test_cli_handoff_error_is_one_line_and_exits_nonzero(tmp_path):
    result = run_cli(
        ["ptft.train", "experiment=digits_classifier", "model.pretrained=missing_run"], cwd=tmp_path
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: model.pretrained=missing_run: no such file")
    )
