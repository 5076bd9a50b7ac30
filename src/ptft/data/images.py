"""In-memory image classification data: fixed stratified splits and label fractions.

A subclass only says how to load the images; this class makes the splits, keeps
``label_fraction`` of the labelled training set for fine-tuning (stratified, seeded),
and serves unlabelled training batches ``(x,)`` to pretraining objectives, so they
never see a training label. Validation and test batches are always ``(x, y)``.

A pretraining run may still *monitor* its representation with the labels of the training
images (:mod:`ptft.monitors.features`): ``labelled_train_dataloader`` serves them for an
online kNN, and ``monitor_labels`` (passed by the run for an objective with an online probe)
adds them to training batches for the probe, which only ever reads detached features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from ptft.config.bounds import Fraction, NonNegativeInt, PositiveInt, Range, Seed, check_arguments
from ptft.data.loaders import SplitLoaders
from ptft.errors import ConfigError


def stratified_split(
    labels: np.ndarray, size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, rest)``: a stratified, seeded choice of ``size`` examples."""
    index = np.arange(len(labels))
    kept, rest = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(rest)


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded ``fraction`` of ``labels`` (all of them for 1.0),
    with at least one example of every class.

    It keeps ``round(fraction * len(labels))`` examples, each class in proportion to its size
    (scikit-learn's stratified split). Where that proportion rounds a rare class down to none
    (on the ``pydoc_package`` training counts, fraction 0.005 keeps 14 of 2858 docstrings and
    drew ``[3 3 2 1 1 1 1 1 1 0]``), one example of that class, drawn with ``seed``, takes the
    place of one of the class kept most above its share, so the total stays the same. Fewer
    examples than classes is refused.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    count = int(round(fraction * len(labels)))
    if count < len(classes):
        raise ConfigError(
            f"data.label_fraction={fraction} keeps {count} of {len(labels)} labelled examples, "
            f"fewer than the {len(classes)} classes, so some class would have no example; "
            f"use data.label_fraction>={len(classes) / len(labels):.4f}"
        )
    if len(labels) - count < len(classes) or counts.min() < 2:
        # scikit-learn's split needs two examples a class and a class's worth left over
        return proportional_subset(inverse, counts, count, seed)
    return with_every_class(inverse, stratified_split(labels, count, seed)[0], seed)


def proportional_subset(
    inverse: np.ndarray, counts: np.ndarray, count: int, seed: int
) -> np.ndarray:
    """``count`` indices: one of every class, the rest in proportion to what each class has
    left (largest remainders), each class's drawn with ``seed``; ``inverse`` holds class
    indices ``0 … len(counts) - 1``."""
    spare = counts - 1
    rest = count - len(counts)
    share = rest * spare / spare.sum() if spare.sum() else np.zeros(len(counts))
    quota = np.floor(share).astype(int)
    by_remainder = np.argsort(-(share - quota), kind="stable")
    quota[by_remainder[: rest - quota.sum()]] += 1
    quota += 1  # never above a class's size: the share of its spare examples is at most all
    rng = np.random.default_rng(seed)
    kept = [
        rng.choice(np.flatnonzero(inverse == c), size=q, replace=False) for c, q in enumerate(quota)
    ]
    return np.sort(np.concatenate(kept))


def with_every_class(inverse: np.ndarray, keep: np.ndarray, seed: int) -> np.ndarray:
    """``keep`` (indices) with one example added for every class it has none of, each in place
    of one of the class kept most above its proportional share (among those that keep two or
    more), drawn with ``seed``; unchanged when every class is there."""
    num_classes = int(inverse.max()) + 1
    kept = np.bincount(inverse[keep], minlength=num_classes)
    if kept.all():
        return keep
    rng = np.random.default_rng(seed)
    share = len(keep) * np.bincount(inverse, minlength=num_classes) / len(inverse)
    chosen = set(keep.tolist())
    for missing in np.flatnonzero(kept == 0):
        surplus = np.where(kept >= 2, kept - share, -np.inf)
        donor = int(np.argmax(surplus))
        chosen.remove(int(rng.choice(sorted(i for i in chosen if inverse[i] == donor))))
        chosen.add(int(rng.choice(np.flatnonzero(inverse == missing))))
        kept[donor] -= 1
        kept[missing] += 1
    return np.array(sorted(chosen))


class ImageDataModule(SplitLoaders):
    """Base for image data held in memory as float tensors in [0, 1]."""

    def __init__(
        self,
        input_shape: Sequence[PositiveInt],
        num_classes: PositiveInt,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 512,
        num_workers: NonNegativeInt = 0,
        val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1,
        test_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.2,
        split_seed: Seed = 0,
        label_fraction: Fraction = 1.0,
        subset_seed: Seed = 0,
        with_labels: bool = True,
        monitor_labels: bool = False,
    ) -> None:
        arguments = dict(locals())
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.label_fraction = label_fraction
        self.subset_seed = subset_seed
        self.with_labels = with_labels
        #: training batches carry labels for a pretraining objective's online probe (only)
        self.monitor_labels = monitor_labels
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.indices: dict[str, np.ndarray] = {}
        if not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"data.label_fraction must be in (0, 1], got {label_fraction}")
        if not (0.0 <= test_fraction < 1.0 and 0.0 < val_fraction < 1.0):
            raise ConfigError(
                f"data.test_fraction={test_fraction} must be in [0, 1) "
                f"and data.val_fraction={val_fraction} in (0, 1)"
            )
        # the other bounds (a batch size of 0 would fail only when the first loader is built)
        check_arguments(ImageDataModule.__init__, "data", arguments)

    # -- what a subclass provides -------------------------------------------------
    def load(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
        """``((images, labels), test or None)``; images float32 ``(N, C, H, W)`` in [0, 1]."""
        raise NotImplementedError

    # -- splits -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        (x, y), test = self.load()
        if len(x) == 0:
            raise ConfigError(
                f"{type(self).__name__} loaded an empty data set; check data.root and the files"
            )
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"data.input_shape={list(self.input_shape)} but the images are "
                f"{list(x.shape[1:])}; fix data.input_shape"
            )
        # indices into the loaded images, or into the official test set when there is one
        pool = np.arange(len(y))
        if test is None:
            if self.test_fraction > 0:
                pool, test_idx = stratified_split(y, 1.0 - self.test_fraction, self.split_seed)
            else:  # no test split: every image is for training and validation
                test_idx = np.arange(0)
            test = (x, y)
            self.indices = {"test": test_idx}
        else:
            self.indices = {"test": np.arange(len(test[1]))}
        train_pos, val_pos = stratified_split(y[pool], 1.0 - self.val_fraction, self.split_seed)
        self.indices["train"], self.indices["val"] = pool[train_pos], pool[val_pos]
        if self.with_labels:  # fine-tuning: a stratified, seeded share of the labelled examples
            keep = label_subset(y[self.indices["train"]], self.label_fraction, self.subset_seed)
            self.indices["train"] = self.indices["train"][keep]
        splits = {"train": (x, y), "val": (x, y), "test": test}
        self.splits = {
            name: (
                torch.as_tensor(splits[name][0][self.indices[name]], dtype=torch.float32),
                torch.as_tensor(splits[name][1][self.indices[name]], dtype=torch.long),
            )
            for name in ("train", "val", "test")
        }

    # -- loaders ----------------------------------------------------------------------
    def dataset(self, split: str, train: bool) -> TensorDataset:
        x, y = self.splits[split]
        labelled = self.with_labels or self.monitor_labels or not train
        return TensorDataset(x, y) if labelled else TensorDataset(x)

    def labelled_train_dataloader(self) -> DataLoader:
        """The training images with their labels, in order, for monitoring a pretraining run
        (the online kNN's bank); no pretraining loss reads from it."""
        x, y = self.splits["train"]
        return DataLoader(TensorDataset(x, y), batch_size=self.eval_batch_size, shuffle=False)
