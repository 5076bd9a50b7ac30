"""Representation quality during pretraining: an online kNN classifier and an online linear probe.

A pretraining loss says how well the objective is solved, not how useful the features
are. These two monitors say the latter, so a run can be watched, and checkpointed
(``model.monitor=val/knn_acc model.monitor_mode=max``), on representation quality:

* **kNN** (``model.knn``): at the end of each validation (and test) epoch, the backbone
  embeds the labelled training images (the bank) and every evaluated image is classified
  by a weighted vote of its ``k`` nearest bank features (:func:`ptft.monitors.knn.knn_predict`);
  logged as ``val/knn_acc``.
* **Linear probe** (``model.online_probe.enabled=true``): a linear layer trained alongside the
  objective, with its own optimizer group, on *detached* backbone features of the training batch;
  logged as ``train/probe_loss`` and ``val/probe_acc``.

Both read the labels of the training images, and nothing else does: the kNN bank comes
from the datamodule's ``labelled_train_dataloader`` (a loader for monitoring only), and the
probe's labels come with the training batch only when the probe is on (the objective
declares ``train_labels``, and the run builds its datamodule to serve them), and only ever
meet detached features. No label reaches the backbone or the pretraining loss.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ptft.config.bounds import PositiveFloat, PositiveInt
from ptft.data.protocol import LabelledTrainData
from ptft.errors import ConfigError
from ptft.monitors.knn import knn_predict

log = logging.getLogger(__name__)


class KNNConfig(TypedDict, total=False):
    """``model.knn``: ``k`` neighbours vote, each with weight ``exp(similarity / temperature)``
    (None: one vote each). The defaults are :func:`_check_knn`'s."""

    k: PositiveInt
    temperature: PositiveFloat | None


class OnlineProbeConfig(TypedDict, total=False):
    """``model.online_probe``: on unless ``enabled`` is false, trained at rate ``lr`` (its
    default is :class:`FeatureMonitor`'s)."""

    enabled: bool
    lr: PositiveFloat


STAGES = ("val", "test")


class FeatureMonitor(nn.Module):
    """The kNN monitor (``knn``: ``{k, temperature}``, or None: off) and the online linear
    probe (``online_probe``: ``{enabled, lr}``, or None: off) on features of size
    ``feature_dim``."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int | None,
        knn: KNNConfig | None = None,
        online_probe: OnlineProbeConfig | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.knn = _check_knn(knn) if knn is not None else None
        self.probe: nn.Linear | None = None
        self.probe_lr = 0.0
        if online_probe is not None and online_probe.get("enabled", True):
            if not num_classes:
                raise ConfigError(
                    "model.online_probe needs model.num_classes (the data's number of classes); "
                    "set it, or model.online_probe.enabled=false"
                )
            self.probe_lr = float(online_probe.get("lr", 1e-2))
            self.probe = nn.Linear(feature_dim, num_classes)
            self.probe_acc = nn.ModuleDict(
                {s: MulticlassAccuracy(num_classes, average="micro") for s in STAGES}
            )
        # the kNN accuracy as a mean of hits over examples, so it is exact across processes
        self.knn_acc = nn.ModuleDict({s: MeanMetric() for s in STAGES})
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._warned = False

    @property
    def active(self) -> bool:
        """Whether any monitor is on (otherwise evaluated images need no features)."""
        return self.knn is not None or self.probe is not None

    @property
    def wants_train_labels(self) -> bool:
        """Whether training batches should carry labels (for the probe, and only for it)."""
        return self.probe is not None

    def param_groups(self) -> list[dict[str, Any]]:
        """The probe's optimizer group: its own learning rate, no weight decay (its name shows
        in the learning-rate monitor as ``lr-<optimizer>/online_probe``)."""
        if self.probe is None:
            return []
        return [
            {
                "params": list(self.probe.parameters()),
                "lr": self.probe_lr,
                "weight_decay": 0.0,
                "name": "online_probe",
            }
        ]

    def probe_loss(self, features: Tensor, labels: Tensor | None) -> Tensor | None:
        """Cross-entropy of the probe on ``features``, detached; None without probe or labels."""
        if self.probe is None or labels is None:
            return None
        # detach: the probe learns from the representation and never shapes it
        return F.cross_entropy(self.probe(features.detach()).float(), labels)

    def observe(self, features: Tensor, labels: Tensor, stage: str) -> None:
        """Features ``(B, D)`` of evaluated images and their labels, kept until the epoch ends."""
        if self.probe is not None:
            self.probe_acc[stage].update(self.probe(features), labels)
        if self.knn is not None:
            self._features.append(features.detach())
            self._labels.append(labels.detach())

    def end_epoch(self, backbone: nn.Module, datamodule: Any, stage: str) -> dict[str, Tensor]:
        """``{"probe_acc": …, "knn_acc": …}`` of the epoch (the monitors that are on); resets
        them."""
        metrics: dict[str, Tensor] = {}
        if self.probe is not None and self.probe_acc[stage].update_called:
            metrics["probe_acc"] = self.probe_acc[stage].compute()
        if self.knn is not None and self._features:
            bank = self.train_bank(backbone, datamodule)
            if bank is not None:
                features, labels = torch.cat(self._features), torch.cat(self._labels)
                num_classes = self.num_classes or int(max(bank[1].max(), labels.max())) + 1
                predicted = knn_predict(
                    *bank, features, self.knn["k"], self.knn["temperature"], num_classes
                )
                self.knn_acc[stage].update((predicted == labels).float())
                metrics["knn_acc"] = self.knn_acc[stage].compute()
        self.reset()
        return metrics

    def reset(self) -> None:
        """Forget what was observed (after an epoch, or a sanity check that logs nothing)."""
        self._features, self._labels = [], []
        for metrics in (getattr(self, "probe_acc", {}), self.knn_acc):
            for metric in metrics.values():
                metric.reset()

    @torch.no_grad()
    def train_bank(self, backbone: nn.Module, datamodule: Any) -> tuple[Tensor, Tensor] | None:
        """Backbone features and labels of the labelled training images (for monitoring only)."""
        if not isinstance(datamodule, LabelledTrainData):
            if not self._warned:
                log.warning(
                    "model.knn: the data serves no labelled training images; the kNN monitor is off"
                )
                self._warned = True
            return None
        device = next(backbone.parameters()).device
        features, labels = [], []
        for x, y in datamodule.labelled_train_dataloader():
            features.append(backbone(x.to(device)))
            labels.append(y.to(device))
        return torch.cat(features), torch.cat(labels)


def _check_knn(knn: KNNConfig) -> dict[str, Any]:
    k, temperature = int(knn.get("k", 20)), knn.get("temperature", 0.07)
    if k < 1:
        raise ConfigError(f"model.knn.k={k} must be at least 1")
    if temperature is not None and temperature <= 0:
        raise ConfigError(
            f"model.knn.temperature={temperature} must be positive, or null for uniform votes"
        )
    return {"k": k, "temperature": None if temperature is None else float(temperature)}


class MonitoredObjective:
    """The hooks an image objective needs around its :class:`FeatureMonitor` (mixed into a
    ``BackboneModule`` that sets ``self.feature_monitor``): labelled training images for the
    kNN bank, the probe's own optimizer group, the probe's loss, and the epoch-end metrics."""

    feature_monitor: FeatureMonitor

    @property
    def train_labels(self) -> bool:
        """Training batches carry labels for the online probe, and only for it (the run asks
        the datamodule for them: :func:`ptft.runs.build.build_datamodule`)."""
        return self.feature_monitor.wants_train_labels

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return self.feature_monitor.param_groups()

    def with_probe_loss(
        self, loss: Tensor, features: Tensor, batch: tuple[Tensor, ...] | list[Tensor]
    ) -> Tensor:
        """``loss`` plus the online probe's loss; labels come with the batch only for the probe,
        which reads detached features, so they never shape the representation."""
        probe_loss = self.feature_monitor.probe_loss(features, batch[1] if len(batch) > 1 else None)
        if probe_loss is None:
            return loss
        self.log("train/probe_loss", probe_loss)
        return loss + probe_loss

    def _end_eval_epoch(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            self.feature_monitor.reset()
            return
        for name, value in self.feature_monitor.end_epoch(
            self.backbone, self.trainer.datamodule, stage
        ).items():
            self.log(f"{stage}/{name}", value)
