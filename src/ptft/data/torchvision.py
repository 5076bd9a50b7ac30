"""Opt-in real image data sets through torchvision (extra ``vision``): MNIST and CIFAR-10.

Nothing downloads unless ``data.download=true``. Missing torchvision or missing files
give a one-line error that says what to install or where to put the files.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ptft.config.bounds import NonEmptyStr
from ptft.data.images import ImageDataModule
from ptft.errors import ConfigError

_DATASETS = {"mnist": ("MNIST", (1, 28, 28), 10), "cifar10": ("CIFAR10", (3, 32, 32), 10)}


class TorchvisionDataModule(ImageDataModule):
    """``name`` in {mnist, cifar10}; the official test split, validation drawn from train."""

    def __init__(
        self,
        name: Literal["mnist", "cifar10"],
        root: NonEmptyStr,
        download: bool = False,
        **kwargs,
    ) -> None:
        if name not in _DATASETS:
            raise ConfigError(f"data.name='{name}' is not one of {sorted(_DATASETS)}")
        _, shape, classes = _DATASETS[name]
        kwargs.setdefault("input_shape", shape)
        kwargs.setdefault("num_classes", classes)
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__(**kwargs)
        self.name, self.root, self.download = name, root, download

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._dataset(train)

    def _dataset(self, train: bool):
        try:
            from torchvision import datasets
        except Exception as err:  # ImportError, or a torchvision built for another torch
            raise ConfigError(
                f"data={self.name} needs torchvision that matches your torch: "
                f"pip install 'ptft[vision]' ({err})"
            ) from err
        cls_name = _DATASETS[self.name][0]
        try:
            return getattr(datasets, cls_name)(self.root, train=train, download=self.download)
        except RuntimeError as err:
            hint = (
                "the download failed (offline?)"
                if self.download
                else "set data.download=true to fetch it (needs network)"
            )
            raise ConfigError(
                f"{cls_name} files not found under data.root={self.root}: "
                "put the original files there "
                f"(as torchvision.datasets.{cls_name} expects) or {hint}"
            ) from err

    def load(self):
        def arrays(train: bool) -> tuple[np.ndarray, np.ndarray]:
            ds = self._dataset(train)
            images = np.asarray(ds.data, dtype=np.float32) / 255.0
            images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
            return np.ascontiguousarray(images), np.asarray(ds.targets, dtype=np.int64)

        return arrays(True), arrays(False)
