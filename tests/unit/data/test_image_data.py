"""Digits splits: disjoint, stratified, stable; label fractions; unlabelled pretraining batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ptft.data.digits import DigitsDataModule
from ptft.errors import ConfigError


def make(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_splits_are_disjoint_cover_everything_and_match_the_source():
    dm = make()
    idx = dm.indices
    all_idx = np.concatenate([idx["train"], idx["val"], idx["test"]])
    assert len(all_idx) == len(set(all_idx.tolist())) == 1797
    digits = load_digits()
    for split in ("train", "val", "test"):
        x, y = dm.splits[split]
        np.testing.assert_allclose(
            x[:, 0].numpy(), digits.images[idx[split]] / 16.0, rtol=0, atol=1e-7
        )
        np.testing.assert_array_equal(y.numpy(), digits.target[idx[split]])
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(idx["test"]) == math.ceil(0.2 * 1797)  # scikit-learn rounds the held-out part up


def test_splits_are_stratified():
    dm = make()
    overall = np.bincount(load_digits().target) / 1797
    for split in ("train", "val", "test"):
        y = dm.splits[split][1].numpy()
        share = np.bincount(y, minlength=10) / len(y)
        # every class within one example of its overall share
        assert np.all(np.abs(share - overall) * len(y) <= 1.0 + 1e-9), split


def test_splits_are_stable_and_seeded():
    a, b = make(), make()
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.indices[split], b.indices[split])
    c = make(split_seed=1)
    assert not np.array_equal(a.indices["test"], c.indices["test"])


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.5])
def test_label_fraction_keeps_a_stratified_subset_of_train(fraction):
    full = make()
    dm = make(label_fraction=fraction, subset_seed=3)
    n_train = len(full.indices["train"])
    assert len(dm.indices["train"]) == round(fraction * n_train)
    assert set(dm.indices["train"]) <= set(full.indices["train"])
    assert set(dm.splits["train"][1].tolist()) == set(range(10))  # every class is there
    # val and test do not depend on the label fraction
    np.testing.assert_array_equal(dm.indices["val"], full.indices["val"])
    np.testing.assert_array_equal(dm.indices["test"], full.indices["test"])
    other_seed = make(label_fraction=fraction, subset_seed=4)
    assert not np.array_equal(dm.indices["train"], other_seed.indices["train"])


def test_label_fraction_too_small_for_every_class_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"label_fraction=0.005 keeps 6 of 1293.*fewer than the 10 classes"
    ):
        make(label_fraction=0.005)
    with pytest.raises(ConfigError, match="must be in"):
        DigitsDataModule(label_fraction=1.5)


def test_pretraining_batches_carry_no_labels_and_cover_all_training_images():
    dm = make(with_labels=False, label_fraction=0.1, batch_size=100)
    assert len(dm.indices["train"]) == 1293  # label_fraction does not shrink pretraining
    batches = list(dm.train_dataloader())
    assert all(len(b) == 1 for b in batches)
    seen = torch.cat([b[0] for b in batches])
    assert seen.shape == (12 * 100, 1, 8, 8)  # 1293 // 100 full batches (partial one dropped)
    val = next(iter(dm.val_dataloader()))
    assert len(val) == 2  # validation keeps its labels for evaluation


def test_wrong_input_shape_is_a_clear_error():
    dm = DigitsDataModule(input_shape=(1, 28, 28))
    with pytest.raises(
        ConfigError, match=r"data.input_shape=\[1, 28, 28\] but the images are \[1, 8, 8\]"
    ):
        dm.setup("fit")


def test_torchvision_data_without_torchvision_says_what_to_install(tmp_path):
    from ptft.data.torchvision import TorchvisionDataModule

    dm = TorchvisionDataModule(name="mnist", root=str(tmp_path))
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match=r"pip install 'ptft\[vision\]'"):
            dm.setup("fit")
    else:  # torchvision works here: the files are missing, offline
        with pytest.raises(ConfigError, match="files not found under data.root"):
            dm.setup("fit")
