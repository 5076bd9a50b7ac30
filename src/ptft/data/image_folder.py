"""The user's own images: a folder per class (fine-tuning), any folder of images (pretraining),
or a Hugging Face image data set (:mod:`ptft.data.image_sources` lists them).

Layouts of ``data.root``:

* ``<root>/<class>/<image>`` (images may sit deeper inside a class folder): a stratified,
  seeded split into test (``data.test_fraction``), then validation (``data.val_fraction`` of
  the rest), as for the digits;
* ``<root>/train/<class>/…``, with ``val/`` and ``test/`` beside it: those splits as they
  are (a split folder that is missing is drawn from ``train/``, stratified); every class of
  ``val/`` and ``test/`` must occur in ``train/``;
* ``data.unlabelled=true``: every image under ``<root>``, at any depth, no classes (for
  pretraining only); split at random (seeded), or by ``train/ val/ test/`` when they exist.
  Its batches are ``(x,)`` in every split, so the kNN monitor has nothing to score.

Or ``data.path`` (with ``data.name``, ``data.data_files``, ``data.split_map``): a Hugging Face
data set, its images in ``data.image_column`` and classes in ``data.label_column``.

Files are listed and checked (``PIL.Image.verify``: the header and, for PNG, the chunks)
at setup; a bad one is skipped with a logged count, or refused in one line
(``data.on_bad_image``). Images are decoded and resized in the DataLoader's workers, never
held in memory all at once: ``data.channels`` (1: grayscale, 3: RGB), ``data.image_size``
(a square resize). With ``data.normalize=true`` each channel is standardised with
``data.mean``/``data.std``, or with statistics streamed once over the training split and
cached as JSON under ``data.cache_dir`` (keyed by a hash of the file list and the settings).
Class names (the folder names, sorted; a data set's ``ClassLabel`` names or its sorted labels)
are ``label_names``: checkpoints and ``ptft-eval``'s per-class report carry them, and
``data.num_classes`` is counted from them when the config resolves (:meth:`count_classes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ptft.config.bounds import (
    Fraction,
    NonEmptyStr,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    check_arguments,
)
from ptft.data.image_sources import SPLITS, FolderImages, HFImages, Listing
from ptft.data.images import label_subset, stratified_split
from ptft.data.loaders import SplitLoaders
from ptft.errors import ConfigError

log = logging.getLogger(__name__)

#: bumped when the statistics' computation changes, so an old cache entry is not reused
_STATS_VERSION = 1


def decode(opened: Any, size: int, channels: int) -> np.ndarray:
    """One image (an opened PIL image, closed here) as float32 ``(channels, size, size)`` in
    [0, 1]: converted, then resized."""
    from PIL import Image

    with opened as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


class ImageFiles(Dataset):
    """Images read lazily (in the DataLoader's workers) from ``source`` by their references:
    ``(x, y)``, or ``(x,)`` without labels; ``x`` standardised with ``mean``/``std`` when
    given."""

    def __init__(
        self,
        source: FolderImages | HFImages,
        paths: Sequence[Any],
        labels: np.ndarray | None,
        size: int,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.source = source
        self.paths = list(paths)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels = size, channels
        self.mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        try:
            opened = self.source.open(self.paths[i])
            x = torch.from_numpy(decode(opened, self.size, self.channels))
        except Exception as err:  # checked at setup, but a file can change or be truncated
            raise ConfigError(
                f"cannot read image {self.source.describe(self.paths[i])}: {err}"
            ) from err
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return (x,) if self.labels is None else (x, self.labels[i])


class ImageFolderDataModule(SplitLoaders):
    """Images from ``root`` (see the module's docstring for the layouts)."""

    def __init__(
        self,
        root: NonEmptyStr | None = None,
        path: NonEmptyStr | None = None,
        name: str | None = None,
        data_files: Any = None,
        split_map: Mapping[str, str] | None = None,
        image_column: NonEmptyStr = "image",
        label_column: NonEmptyStr = "label",
        image_size: PositiveInt = 32,
        channels: Literal[1, 3] = 3,
        input_shape: Sequence[PositiveInt] | None = None,
        num_classes: PositiveInt | None = None,
        unlabelled: bool = False,
        on_bad_image: Literal["skip", "error"] = "error",
        normalize: bool = False,
        mean: list[float] | None = None,
        std: list[PositiveFloat] | None = None,
        cache_dir: str | None = None,
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
        check_arguments(ImageFolderDataModule.__init__, "data", locals())
        super().__init__()
        if (root is None) == (path is None):
            raise ConfigError(
                "give the images one way: data.root=DIR (a folder per class, or any folder with "
                "data.unlabelled=true) or data.path=… (a Hugging Face data set); got "
                + ("both" if root else "neither")
            )
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: 1 (grayscale) or 3 (RGB)")
        if on_bad_image not in ("skip", "error"):
            raise ConfigError(f"data.on_bad_image={on_bad_image}: skip or error")
        shape = (channels, image_size, image_size)
        if input_shape is not None and tuple(input_shape) != shape:
            raise ConfigError(
                f"data.input_shape={list(input_shape)} but data.channels={channels} and "
                f"data.image_size={image_size} make {list(shape)}; leave data.input_shape to "
                "the yaml (it follows them)"
            )
        for name, stat in (("mean", mean), ("std", std)):
            if stat is not None and len(stat) not in (1, channels):
                raise ConfigError(
                    f"data.{name}={list(stat)}: one value, or one per channel ({channels})"
                )
        if (mean is None) != (std is None):
            raise ConfigError("data.mean and data.std go together: give both, or neither")
        if unlabelled and with_labels:
            raise ConfigError(
                f"data.unlabelled=true: the images of data.{'root' if root else 'path'}="
                f"{root or path} have no labels, "
                "which this model trains on; fine-tune on a folder per class instead"
            )
        if unlabelled and monitor_labels:
            raise ConfigError(
                "model.online_probe needs labelled images, and data.unlabelled=true has none; "
                "set model.online_probe.enabled=false"
            )
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.source = self.source_of(locals())
        #: what the images are named by in messages: the folder, or the data set's path
        self.root: Path | str = getattr(self.source, "root", path)
        self.image_size, self.channels, self.input_shape = image_size, channels, shape
        self.num_classes, self.unlabelled, self.on_bad_image = num_classes, unlabelled, on_bad_image
        self.normalize = normalize
        self.mean = None if mean is None else [float(v) for v in mean] * (channels // len(mean))
        self.std = None if std is None else [float(v) for v in std] * (channels // len(std))
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.label_fraction, self.subset_seed = (
            split_seed,
            label_fraction,
            subset_seed,
        )
        self.with_labels, self.monitor_labels = with_labels, monitor_labels
        #: the class names, in label order (empty without classes, or until setup)
        self.label_names: list[str] = []
        #: what the run read (written to data_manifest.json and checkpoints)
        self.manifest: dict[str, Any] = {}
        #: per split: the image references (paths, or rows of a data set) and their labels
        #: (all of the training split's, before the label fraction)
        self.files: dict[str, tuple[list[Any], np.ndarray]] = {}
        self.indices: dict[str, np.ndarray] = {}

    @staticmethod
    def source_of(settings: Mapping[str, Any]) -> FolderImages | HFImages:
        """Where the images come from: ``root`` (a folder) or ``path`` (a data set)."""
        unlabelled = bool(settings.get("unlabelled"))
        if settings.get("root"):
            return FolderImages(str(settings["root"]), unlabelled)
        cache = settings.get("cache_dir")
        return HFImages(
            str(settings["path"]),
            settings.get("name"),
            settings.get("data_files"),
            settings.get("split_map"),
            str(settings.get("image_column") or "image"),
            str(settings.get("label_column") or "label"),
            unlabelled,
            Path(cache) if cache else Path("."),
        )

    @classmethod
    def count_classes(cls, settings: Mapping[str, Any]) -> int | None:
        """``data.num_classes`` of the ``data`` config ``settings``: the class folders of the
        training images, or the classes of a data set's label column (None when
        ``unlabelled``); read once per process for the same settings."""
        if not settings.get("root") and not settings.get("path"):
            raise ConfigError(
                "data.root (a folder per class) or data.path (a Hugging Face data set) is not "
                "set; give one, e.g. data.root=DIR"
            )
        key = json.dumps(settings, sort_keys=True, default=str)
        if key not in _COUNTS:
            names = cls.source_of(settings).class_names()
            _COUNTS[key] = None if names is None else len(names)
        return _COUNTS[key]

    # -- listing ----------------------------------------------------------------------
    def _check(self, files: list[Any], names: list[str]) -> tuple[list[Any], list[str]]:
        """The images Pillow can open (``verify``: header and structure, not every pixel)."""
        good, bad = [], []
        for path, name in zip(files, names, strict=True):
            try:
                with self.source.open(path) as image:
                    image.verify()
                good.append((path, name))
            except Exception as err:
                if self.on_bad_image == "error":
                    raise ConfigError(
                        f"{self.source.describe(path)}: not a readable image "
                        f"({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'corrupt'}); remove it, or "
                        "skip such files with data.on_bad_image=skip"
                    ) from err
                bad.append(path)
        if bad:
            log.warning(
                "data.on_bad_image=skip: skipped %d unreadable image(s) of %d under %s (first: %s)",
                len(bad),
                len(files),
                self.root,
                self.source.describe(bad[0]),
            )
        self._skipped += len(bad)
        return [p for p, _ in good], [n for _, n in good]

    # -- splits -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.files:
            return
        self._skipped = 0
        found, self.label_names = self.source.listing()
        listed: Listing = {split: self._check(*entry) for split, entry in found.items()}
        pool_name = "train" if "train" in listed else "all"
        pool_files, pool_names = listed[pool_name]
        if not self.unlabelled:
            for split in ("val", "test"):
                unknown = sorted(set(listed.get(split, ([], []))[1]) - set(self.label_names))
                if unknown:
                    raise ConfigError(
                        f"{self.source.where}: {split} has class(es) {', '.join(unknown)} "
                        f"that train does not have ({', '.join(self.label_names)}); a model "
                        "cannot learn a class it never sees: add its training images"
                    )
            if self.num_classes is not None and self.num_classes != len(self.label_names):
                raise ConfigError(
                    f"data.num_classes={self.num_classes} but {self.source.where} has "
                    f"{len(self.label_names)} classes ({', '.join(self.label_names)}); drop "
                    f"data.num_classes (it is counted) or pass {len(self.label_names)}"
                )
        index = {name: i for i, name in enumerate(self.label_names)}

        def labels(names: list[str]) -> np.ndarray:
            return np.array([index.get(n, 0) for n in names], dtype=np.int64)

        pool = (np.array(pool_files, dtype=object), labels(pool_names))
        drawn = [s for s in ("test", "val") if s not in listed]
        need = {"test": self.test_fraction > 0, "val": True}
        self._check_counts(pool[1], [s for s in drawn if need[s]], pool_name)
        files: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        rest = pool
        for split in drawn:
            fraction = self.test_fraction if split == "test" else self.val_fraction
            if fraction == 0:
                files[split] = (rest[0][:0], rest[1][:0])
                continue
            try:
                keep, out = stratified_split(rest[1], 1.0 - fraction, self.split_seed)
            except ValueError as err:  # too few images for the split's sizes
                raise ConfigError(
                    f"{self.source.where}: {len(rest[1])} images are too few to draw "
                    f"data.{split}_fraction={fraction} of them for every class "
                    f"({str(err).splitlines()[0]}); add images or {self.source.own(split)}"
                ) from err
            files[split] = (rest[0][out], rest[1][out])
            rest = (rest[0][keep], rest[1][keep])
        files["train"] = rest
        for split in ("val", "test"):
            if split in listed:
                files[split] = (np.array(listed[split][0], dtype=object), labels(listed[split][1]))
        self.files = {s: (list(files[s][0]), files[s][1]) for s in SPLITS}
        train_labels = self.files["train"][1]
        self.indices = {s: np.arange(len(self.files[s][0])) for s in SPLITS}
        if self.with_labels:  # fine-tuning: a stratified, seeded share of the labelled images
            self.indices["train"] = label_subset(
                train_labels, self.label_fraction, self.subset_seed
            )
        if self.normalize and self.mean is None:
            self.mean, self.std = self._statistics()
        self._summarise()

    def _check_counts(self, labels: np.ndarray, drawn: list[str], pool: str) -> None:
        """Every class has an image for training and for each split drawn from it."""
        need = 1 + len(drawn)
        if self.unlabelled:
            if len(labels) < need:
                raise ConfigError(
                    f"{self.source.where}: {len(labels)} image(s), fewer than the {need} a "
                    f"train/{'/'.join(drawn)} split needs"
                )
            return
        counts = np.bincount(labels, minlength=len(self.label_names))
        for name, count in zip(self.label_names, counts, strict=True):
            if count < need:
                own = f", or {self.source.own(drawn[0])}" if drawn else ""
                raise ConfigError(
                    f"{self.source.where}: class {name} has {count} image(s) in "
                    f"{self.source.place(name, pool)}, fewer than the {need} a stratified "
                    f"train/{'/'.join(drawn)} split needs (one in each); add images{own}"
                )

    # -- normalisation statistics ---------------------------------------------------------
    def _statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the training split's pixels (every
        training image, whatever the label fraction, so pretraining and fine-tuning
        standardise alike), streamed over the files once; cached under ``cache_dir``."""
        paths = self.files["train"][0]
        key = hashlib.sha256()
        key.update(json.dumps([_STATS_VERSION, self.image_size, self.channels]).encode())
        for path in paths:
            key.update(f"{self.source.stamp(path)}\n".encode())
        cache = self.cache_dir / f"stats_{key.hexdigest()[:32]}.json" if self.cache_dir else None
        if cache is not None and cache.is_file():
            stored = json.loads(cache.read_text())
            return stored["mean"], stored["std"]
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        pixels = 0
        for path in paths:
            x = decode(self.source.open(path), self.image_size, self.channels)
            x = x.astype(np.float64)
            total += x.sum(axis=(1, 2))
            squares += (x * x).sum(axis=(1, 2))
            pixels += x.shape[1] * x.shape[2]
        mean = total / pixels
        std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel: centre it only
        stats = [float(v) for v in mean], [float(v) for v in std]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"mean": stats[0], "std": stats[1], "images": len(paths)}))
            tmp.replace(cache)  # atomic: two runs computing at once write the same numbers
        log.info(
            "normalisation statistics of %d training images: mean %s, std %s", len(paths), *stats
        )
        return stats

    def _summarise(self) -> None:
        sizes = {s: len(self.indices[s]) for s in SPLITS}
        if self.unlabelled:
            classes = "no classes (data.unlabelled=true)"
        else:
            counts = np.bincount(self.files["train"][1], minlength=len(self.label_names))
            shown = ", ".join(f"{n}: {c}" for n, c in zip(self.label_names, counts, strict=True))
            classes = f"{len(self.label_names)} classes (training images: {shown})"
        skipped = f"; {self._skipped} unreadable skipped" if self._skipped else ""
        log.info(
            "image_folder %s: train %d, val %d, test %d images; %s%s",
            self.root,
            sizes["train"],
            sizes["val"],
            sizes["test"],
            classes,
            skipped,
        )
        self.manifest = {
            "source": self.source.where,
            "splits": sizes,
            "classes": list(self.label_names),
            "skipped_images": self._skipped,
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.mean if self.normalize else None,
            "std": self.std if self.normalize else None,
        }

    # -- loaders ----------------------------------------------------------------------
    def _images(self, split: str, labelled: bool, subset: bool = True) -> ImageFiles:
        paths, labels = self.files[split]
        keep = self.indices[split] if subset else np.arange(len(paths))
        stats = (self.mean, self.std) if self.normalize else (None, None)
        return ImageFiles(
            self.source,
            [paths[i] for i in keep],
            labels[keep] if labelled else None,
            self.image_size,
            self.channels,
            *stats,
        )

    def dataset(self, split: str, train: bool) -> ImageFiles:
        labelled = not self.unlabelled and (self.with_labels or self.monitor_labels or not train)
        return self._images(split, labelled)

    def labelled_train_dataloader(self) -> DataLoader:
        """Every training image with its label, in order, for the kNN monitor of a pretraining
        run (no pretraining loss reads from it)."""
        if self.unlabelled:
            raise ConfigError("data.unlabelled=true: the training images have no labels")
        return DataLoader(
            self._images("train", labelled=True, subset=False),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )


#: class counts by the data settings: the config resolves ``data.num_classes`` several times
_COUNTS: dict[str, int | None] = {}
