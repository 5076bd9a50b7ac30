"""The online representation monitors: the kNN vote against scikit-learn, the online probe's
isolation from the backbone, and the labels the image data serves for monitoring only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from ptft.data.digits import DigitsDataModule
from ptft.errors import ConfigError
from ptft.monitors.features import FeatureMonitor
from ptft.monitors.knn import knn_predict
from ptft.objectives.autoencoder import Autoencoder
from ptft.objectives.simclr import SimCLR
from ptft.runs.build import build_datamodule

CNN = {"_target_": "ptft.nn.cnn.CNN", "channels": [8, 16]}
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}


def clusters(
    n_bank: int, n_queries: int, num_classes: int = 5, dim: int = 16
) -> tuple[np.ndarray, ...]:
    """``(bank, bank labels, queries, query labels)``: noisy points around one centre per class,
    so that neighbours agree often, not always."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n_bank + n_queries)
    points = centres[labels] + 1.5 * rng.normal(size=(len(labels), dim))
    return points[:n_bank], labels[:n_bank], points[n_bank:], labels[n_bank:]


@pytest.mark.parametrize("k", [1, 4, 20])
def test_uniform_votes_equal_scikit_learn(k):
    x, y, queries, _ = clusters(400, 300)
    reference = (
        KNeighborsClassifier(k, metric="cosine", algorithm="brute").fit(x, y).predict(queries)
    )
    ours = knn_predict(
        torch.tensor(x), torch.tensor(y), torch.tensor(queries), k, None, num_classes=5
    )
    np.testing.assert_array_equal(ours.numpy(), reference)


@pytest.mark.parametrize("k, temperature", [(5, 0.07), (20, 0.07), (20, 0.5)])
def test_temperature_weights_equal_scikit_learn_with_the_same_weights(k, temperature):
    x, y, queries, truth = clusters(400, 300)
    # scikit-learn's cosine distance is 1 - similarity: exp(s / T) = exp((1 - d) / T)
    weighted = KNeighborsClassifier(
        k, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / temperature)
    )
    reference = weighted.fit(x, y).predict(queries)
    ours = knn_predict(
        torch.tensor(x), torch.tensor(y), torch.tensor(queries), k, temperature, num_classes=5
    )
    np.testing.assert_array_equal(ours.numpy(), reference)
    # and close to the unweighted vote: the weighting only settles near-ties differently
    uniform = KNeighborsClassifier(k, metric="cosine", algorithm="brute").fit(x, y).predict(queries)
    assert (ours.numpy() == uniform).mean() > 0.9
    assert (ours.numpy() == truth).mean() > 0.5


def test_chunks_and_a_small_bank_change_nothing():
    x, y, queries, _ = clusters(50, 70)
    args = (torch.tensor(x), torch.tensor(y), torch.tensor(queries))
    whole = knn_predict(*args, k=5, temperature=0.1, num_classes=5)
    torch.testing.assert_close(
        knn_predict(*args, k=5, temperature=0.1, num_classes=5, chunk_size=7), whole
    )
    # k above the bank size votes with the whole bank
    everything = knn_predict(*args, k=1000, temperature=None, num_classes=5)
    torch.testing.assert_close(
        everything, knn_predict(*args, k=50, temperature=None, num_classes=5)
    )


def test_monitor_settings_are_checked():
    with pytest.raises(ConfigError, match="model.knn.k=0"):
        FeatureMonitor(8, 10, knn={"k": 0, "temperature": 0.1})
    with pytest.raises(ConfigError, match="model.knn.temperature"):
        FeatureMonitor(8, 10, knn={"k": 5, "temperature": 0.0})
    with pytest.raises(ConfigError, match="model.online_probe needs model.num_classes"):
        FeatureMonitor(8, None, online_probe={"enabled": True, "lr": 0.1})
    assert FeatureMonitor(8, 10, online_probe={"enabled": False, "lr": 0.1}).probe is None


@pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")  # no Trainer: nothing is logged
@pytest.mark.parametrize(
    "cls, extra", [(SimCLR, {"augment": {"noise_std": 0.1}}), (Autoencoder, {})]
)
def test_online_probe_leaves_the_backbone_gradient_unchanged(cls, extra):
    torch.manual_seed(0)
    common = {
        "backbone": CNN,
        "input_shape": [1, 8, 8],
        "optimizer": ADAMW,
        "num_classes": 10,
        **extra,
    }
    with_probe = cls(**common, online_probe={"enabled": True, "lr": 1e-2})
    without = cls(**common, online_probe=None)
    missing, unexpected = without.load_state_dict(with_probe.state_dict(), strict=False)
    assert not missing and unexpected == [
        "feature_monitor.probe.weight",
        "feature_monitor.probe.bias",
    ]
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    grads = []
    for module, batch in ((with_probe, (x, y)), (without, (x,))):
        torch.manual_seed(1)  # the same augmented views
        module.training_step(batch, 0).backward()
        grads.append({n: p.grad.clone() for n, p in module.backbone.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=0, atol=0, msg=name)
    # the probe learned from the labels, with a group of its own
    probe = with_probe.feature_monitor.probe
    assert probe.weight.grad is not None and probe.weight.grad.abs().sum() > 0
    assert with_probe.extra_param_groups() == [
        {
            "params": [probe.weight, probe.bias],
            "lr": 1e-2,
            "weight_decay": 0.0,
            "name": "online_probe",
        }
    ]
    assert without.extra_param_groups() == []


def test_pretraining_batches_carry_labels_only_for_the_probe():
    data = DigitsDataModule(with_labels=False, batch_size=64, label_fraction=0.1)
    data.setup("fit")
    assert len(next(iter(data.train_dataloader()))) == 1  # (x,): the objective sees no label
    data = DigitsDataModule(
        with_labels=False, monitor_labels=True, batch_size=64, label_fraction=0.1
    )
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,)
    # monitoring uses every training image (label_fraction is for fine-tuning), in order
    images, labels = zip(*data.labelled_train_dataloader(), strict=True)
    torch.testing.assert_close(torch.cat(images), data.splits["train"][0])
    torch.testing.assert_close(torch.cat(labels), data.splits["train"][1])
    assert len(torch.cat(labels)) == len(data.indices["train"]) > 1000


def test_the_run_serves_the_labels_the_model_declares(tmp_path):
    common = {"backbone": CNN, "input_shape": [1, 8, 8], "optimizer": ADAMW, "num_classes": 10}
    probed = SimCLR(**common, online_probe={"enabled": True, "lr": 1e-2})
    unprobed = Autoencoder(**common, online_probe=None)
    assert (probed.supervised, probed.train_labels) == (False, True)
    assert (unprobed.supervised, unprobed.train_labels) == (False, False)
    digits = {
        "_target_": "ptft.data.digits.DigitsDataModule",
        "batch_size": 64,
        "label_fraction": 0.1,
    }
    for model, batch_len in ((probed, 2), (unprobed, 1)):
        data = build_datamodule(digits, model.supervised, model.train_labels)
        data.setup("fit")
        assert len(next(iter(data.train_dataloader()))) == batch_len
        assert len(data.indices["train"]) > 1000  # every training image: no label_fraction
    # data that cannot label its training examples: one line, before anything is built
    text = {
        "_target_": "ptft.data.text.PydocTextDataModule",
        "cache_dir": str(tmp_path),
        "input_shape": [32],
        "block_size": 32,
    }
    with pytest.raises(
        ConfigError, match=r"^model.online_probe needs labelled image data .*enabled=false$"
    ):
        build_datamodule(text, probed.supervised, probed.train_labels)


def test_no_test_fraction_leaves_an_empty_test_split():
    data = DigitsDataModule(with_labels=True, test_fraction=0.0)
    data.setup("test")
    assert len(data.splits["test"][0]) == 0
    assert len(data.splits["train"][0]) + len(data.splits["val"][0]) == 1797
