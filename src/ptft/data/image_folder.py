"""The user's own images: a folder per class (fine-tuning), or any folder of images (pretraining).

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

Files are listed and checked (``PIL.Image.verify``: the header and, for PNG, the chunks)
at setup; a bad one is skipped with a logged count, or refused in one line
(``data.on_bad_image``). Images are decoded and resized in the DataLoader's workers, never
held in memory all at once: ``data.channels`` (1: grayscale, 3: RGB), ``data.image_size``
(a square resize). With ``data.normalize=true`` each channel is standardised with
``data.mean``/``data.std``, or with statistics streamed once over the training split and
cached as JSON under ``data.cache_dir`` (keyed by a hash of the file list and the settings).
Class names (the folder names, sorted) are ``label_names``: checkpoints and ``ptft-eval``'s
per-class report carry them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
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
from ptft.data.images import label_subset, stratified_split
from ptft.data.loaders import SplitLoaders
from ptft.errors import ConfigError

log = logging.getLogger(__name__)

#: file name endings read as images (case-insensitive)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLITS = ("train", "val", "test")
#: bumped when the statistics' computation changes, so an old cache entry is not reused
_STATS_VERSION = 1


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(directory: Path) -> list[Path]:
    """Every image under ``directory``, at any depth, sorted; hidden folders are left out."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and is_image(p)
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as float32 ``(channels, size, size)`` in [0, 1]: converted, then resized."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


class ImageFiles(Dataset):
    """Images read lazily (in the DataLoader's workers): ``(x, y)``, or ``(x,)`` without
    labels; ``x`` standardised with ``mean``/``std`` when given."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray | None,
        size: int,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels = size, channels
        self.mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        try:
            x = torch.from_numpy(decode(self.paths[i], self.size, self.channels))
        except Exception as err:  # checked at setup, but a file can change or be truncated
            raise ConfigError(f"cannot read image {self.paths[i]}: {err}") from err
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return (x,) if self.labels is None else (x, self.labels[i])


class ImageFolderDataModule(SplitLoaders):
    """Images from ``root`` (see the module's docstring for the layouts)."""

    def __init__(
        self,
        root: NonEmptyStr,
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
                f"data.unlabelled=true: the images under data.root={root} have no labels, "
                "which this model trains on; fine-tune on a folder per class instead"
            )
        if unlabelled and monitor_labels:
            raise ConfigError(
                "model.online_probe needs labelled images, and data.unlabelled=true has none; "
                "set model.online_probe.enabled=false"
            )
        self.root = Path(root).expanduser()
        self.image_size, self.channels, self.input_shape = image_size, channels, shape
        self.num_classes, self.unlabelled, self.on_bad_image = num_classes, unlabelled, on_bad_image
        self.normalize = normalize
        self.mean = None if mean is None else [float(v) for v in mean] * (channels // len(mean))
        self.std = None if std is None else [float(v) for v in std] * (channels // len(std))
        self.cache_dir = Path(cache_dir) if cache_dir else None
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
        #: per split: the image files and their labels (all of the training split's, before
        #: the label fraction)
        self.files: dict[str, tuple[list[Path], np.ndarray]] = {}
        self.indices: dict[str, np.ndarray] = {}
        self._folders: list[str] = []

    # -- listing ----------------------------------------------------------------------
    def _classes(self, directory: Path) -> dict[str, list[Path]]:
        """``{class: images}`` of a folder-per-class tree."""
        loose = [p.name for p in directory.iterdir() if p.is_file() and is_image(p)]
        if loose:
            raise ConfigError(
                f"{directory} holds images directly ({loose[0]}, …), not a folder per class; "
                "put each class's images in a folder named after it, or pretrain on them with "
                "data.unlabelled=true"
            )
        folders = sorted(
            p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        return {p.name: image_files(p) for p in folders}

    def _list(self) -> dict[str, tuple[list[Path], list[str]]]:
        """Per split folder present (``train``, ``val``, ``test``), or ``all`` for a tree
        without them: the files and their class names ("" without classes)."""
        if not self.root.is_dir():
            raise ConfigError(f"data.root={self.root}: no such directory")
        split_dirs = {s: self.root / s for s in SPLITS if (self.root / s).is_dir()}
        if split_dirs and "train" not in split_dirs:
            raise ConfigError(
                f"data.root={self.root} has {'/ '.join(sorted(split_dirs))}/ but no train/: "
                "the training images go in train/"
            )
        where = split_dirs or {"all": self.root}
        listed = {}
        for split, directory in where.items():
            if self.unlabelled:
                files = image_files(directory)
                listed[split] = (files, [""] * len(files))
            else:
                classes = self._classes(directory)
                if split in ("train", "all"):  # every class folder, an empty one too
                    self._folders = sorted(classes)
                listed[split] = (
                    [f for files in classes.values() for f in files],
                    [name for name, files in classes.items() for _ in files],
                )
        total = sum(len(files) for files, _ in listed.values())
        if total == 0:
            layout = "any folder" if self.unlabelled else "a folder per class (<root>/<class>/)"
            raise ConfigError(
                f"data.root={self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"in {layout}"
            )
        return listed

    def _check(self, files: list[Path], names: list[str]) -> tuple[list[Path], list[str]]:
        """The files Pillow can open (``verify``: header and structure, not every pixel)."""
        from PIL import Image

        good, bad = [], []
        for path, name in zip(files, names, strict=True):
            try:
                with Image.open(path) as image:
                    image.verify()
                good.append((path, name))
            except Exception as err:
                if self.on_bad_image == "error":
                    raise ConfigError(
                        f"{path}: not a readable image ({type(err).__name__}: "
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
                bad[0],
            )
        self._skipped += len(bad)
        return [p for p, _ in good], [n for _, n in good]

    # -- splits -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.files:
            return
        self._skipped = 0
        listed = {split: self._check(*entry) for split, entry in self._list().items()}
        pool_name = "train" if "train" in listed else "all"
        pool_files, pool_names = listed[pool_name]
        if self.unlabelled:
            self.label_names = []
        else:
            self.label_names = self._folders
            for split in ("val", "test"):
                unknown = sorted(set(listed.get(split, ([], []))[1]) - set(self.label_names))
                if unknown:
                    raise ConfigError(
                        f"data.root={self.root}: {split}/ has class(es) {', '.join(unknown)} "
                        f"that train/ does not have ({', '.join(self.label_names)}); a model "
                        "cannot learn a class it never sees: add its training images"
                    )
            if self.num_classes is not None and self.num_classes != len(self.label_names):
                raise ConfigError(
                    f"data.num_classes={self.num_classes} but data.root={self.root} has "
                    f"{len(self.label_names)} class folders ({', '.join(self.label_names)}); "
                    f"pass data.num_classes={len(self.label_names)}"
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
                    f"data.root={self.root}: {len(rest[1])} images are too few to draw "
                    f"data.{split}_fraction={fraction} of them for every class "
                    f"({str(err).splitlines()[0]}); add images or give {split}/ its own folder"
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
                    f"data.root={self.root}: {len(labels)} image(s), fewer than the {need} a "
                    f"train/{'/'.join(drawn)} split needs"
                )
            return
        counts = np.bincount(labels, minlength=len(self.label_names))
        for name, count in zip(self.label_names, counts, strict=True):
            if count < need:
                where = "train/" if pool == "train" else ""
                raise ConfigError(
                    f"data.root={self.root}: class {name} has {count} image(s) in {where}"
                    f"{name}/, fewer than the {need} a stratified train/{'/'.join(drawn)} split "
                    "needs (one in each); add images, or give the split its own folder"
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
            stat = path.stat()
            key.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        cache = self.cache_dir / f"stats_{key.hexdigest()[:32]}.json" if self.cache_dir else None
        if cache is not None and cache.is_file():
            stored = json.loads(cache.read_text())
            return stored["mean"], stored["std"]
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        pixels = 0
        for path in paths:
            x = decode(path, self.image_size, self.channels).astype(np.float64)
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
            "root": str(self.root),
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
