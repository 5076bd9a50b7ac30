"""Where ``data=image_folder`` finds its images: a folder on disk (:class:`FolderImages`) or a
Hugging Face data set with an image column (:class:`HFImages`).

A source lists, per split it has, references to its images and their class names, and opens
one image by its reference. References are small and picklable (a :class:`~pathlib.Path`, or
a :class:`Row` of a data set), so the DataLoader's workers decode the images, never the main
process all at once; :class:`ptft.data.image_folder.ImageFolderDataModule` makes the splits,
checks and decodes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptft.errors import ConfigError

#: file name endings read as images (case-insensitive)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SPLITS = ("train", "val", "test")
#: ptft split → the split name most Hugging Face data sets use
DEFAULT_SPLIT_MAP = {"train": "train", "val": "validation", "test": "test"}
#: per split the source has (``train``, ``val``, ``test``; or ``all`` for one pool to split):
#: the image references and their class names ("" without classes)
Listing = dict[str, tuple[list[Any], list[str]]]


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


class FolderImages:
    """Images under ``root``: a folder per class, ``train/ val/ test/`` split folders of them,
    or (``unlabelled``) every image at any depth. References are the files' paths."""

    def __init__(self, root: str, unlabelled: bool) -> None:
        self.root = Path(root).expanduser()
        self.unlabelled = unlabelled
        self.where = f"data.root={self.root}"

    def _classes(self, directory: Path) -> dict[str, list[Path]]:
        """``{class: images}`` of a folder-per-class tree (an empty class folder too)."""
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

    def _split_dirs(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise ConfigError(f"data.root={self.root}: no such directory")
        split_dirs = {s: self.root / s for s in SPLITS if (self.root / s).is_dir()}
        if split_dirs and "train" not in split_dirs:
            raise ConfigError(
                f"data.root={self.root} has {'/ '.join(sorted(split_dirs))}/ but no train/: "
                "the training images go in train/"
            )
        return split_dirs

    def class_names(self) -> list[str] | None:
        """The class folders of the training images, sorted (None without classes): what
        ``data.num_classes`` counts, without listing a single image."""
        if self.unlabelled:
            return None
        directory = self._split_dirs().get("train", self.root)
        return sorted(
            p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def listing(self) -> tuple[Listing, list[str]]:
        """The images of each split folder (or ``all``), and the class names (every class
        folder of the training images, sorted)."""
        where = self._split_dirs() or {"all": self.root}
        listed: Listing = {}
        names: list[str] = []
        for split, directory in where.items():
            if self.unlabelled:
                files = image_files(directory)
                listed[split] = (files, [""] * len(files))
                continue
            classes = self._classes(directory)
            if split in ("train", "all"):
                names = sorted(classes)
            listed[split] = (
                [f for files in classes.values() for f in files],
                [name for name, files in classes.items() for _ in files],
            )
        if not any(refs for refs, _ in listed.values()):
            layout = "any folder" if self.unlabelled else "a folder per class (<root>/<class>/)"
            raise ConfigError(
                f"data.root={self.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"in {layout}"
            )
        return listed, names

    def open(self, ref: Path) -> Any:
        from PIL import Image

        return Image.open(ref)

    def describe(self, ref: Path) -> str:
        return str(ref)

    def stamp(self, ref: Path) -> str:
        """What the image's pixels depend on, for the statistics' cache key."""
        stat = ref.stat()
        return f"{ref.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"

    def place(self, name: str, pool: str) -> str:
        """Where a class's training images are, for an error."""
        return f"{'train/' if pool == 'train' else ''}{name}/"

    def own(self, split: str) -> str:
        """How to give ``split`` images of its own, for an error."""
        return f"give {split}/ its own folder"


@dataclass(frozen=True)
class Row:
    """One image of a Hugging Face data set: its split (the data set's name for it) and row."""

    split: str
    index: int

    def __str__(self) -> str:
        return f"{self.split}[{self.index}]"


class HFImages:
    """Images of a Hugging Face data set (a ``save_to_disk`` folder, a builder such as
    ``imagefolder`` over local files, or the local cache; extra ``hf``): the
    ``image_column`` (a ``datasets.Image`` feature, read as encoded bytes or a path, decoded in
    the workers), classes from ``label_column`` (a ``ClassLabel``'s names, or the training
    split's values: ints in numeric order, strings sorted). ``split_map`` names the data set's
    train/val/test splits; a split it lacks is drawn from train."""

    def __init__(
        self,
        path: str,
        name: str | None,
        data_files: Any,
        split_map: Mapping[str, str] | None,
        image_column: str,
        label_column: str,
        unlabelled: bool,
        cache_dir: Path,
    ) -> None:
        unknown = set(split_map or {}) - set(SPLITS)
        if unknown:
            raise ConfigError(
                f"data.split_map has unknown keys {sorted(unknown)}; use only train, val and test"
            )
        self.path, self.name, self.data_files = path, name, data_files
        self.split_map = {**DEFAULT_SPLIT_MAP, **(split_map or {})}
        self.image_column, self.label_column = image_column, label_column
        self.unlabelled = unlabelled
        self.cache_dir = cache_dir
        self.where = f"data.path={path}"
        self._splits: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        """ptft split → the data set's split, its image column not decoded (bytes or a path)."""
        if self._splits is not None:
            return self._splits
        import datasets

        from ptft.data.tables import read_hf

        loaded = read_hf(self.path, self.name, self.data_files, self.cache_dir)
        train = self.split_map["train"]
        if train not in loaded:
            raise ConfigError(
                f"data.split_map.train={train}: {self.path} has no such split; "
                f"set it to one of {', '.join(loaded)}"
            )
        splits = {}
        for split in SPLITS:
            if self.split_map[split] not in loaded:
                continue
            source, dataset = loaded[self.split_map[split]]
            columns = [self.image_column] + ([] if self.unlabelled else [self.label_column])
            for key, column in zip(("image_column", "label_column"), columns, strict=False):
                if column not in dataset.column_names:
                    raise ConfigError(
                        f"data.{key}={column}: {source} has no such column; its columns are "
                        f"{', '.join(dataset.column_names)}"
                    )
            feature = dataset.features[self.image_column]
            if not isinstance(feature, datasets.Image):
                raise ConfigError(
                    f"data.image_column={self.image_column}: {source} holds "
                    f"{type(feature).__name__} values there, not images (datasets.Image); "
                    "name the image column"
                )
            splits[split] = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self._splits = splits
        return splits

    def _class_label(self) -> list[str] | None:
        """The names of a ``ClassLabel`` label column, else None."""
        import datasets

        feature = self._load()["train"].features[self.label_column]
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def _labels(self, split: str, names: list[str] | None) -> list[str]:
        from ptft.data.labelled_text import label_key

        values = self._load()[split][self.label_column]
        where = f"data.label_column={self.label_column}"
        if names is not None:
            return [names[int(label_key(v, where))] for v in values]
        return [str(label_key(v, where)) for v in values]

    def class_names(self) -> list[str] | None:
        """The classes (None without them), read from the features or the training labels."""
        if self.unlabelled:
            return None
        from ptft.data.labelled_text import class_names, label_key

        names = self._class_label()
        if names is not None:
            return names
        where = f"data.label_column={self.label_column}"
        values = self._load()["train"][self.label_column]
        return [str(c) for c in class_names([label_key(v, where) for v in values])]

    def listing(self) -> tuple[Listing, list[str]]:
        splits = self._load()
        names = self.class_names()
        class_label = None if names is None else self._class_label()
        listed: Listing = {}
        for split, dataset in splits.items():
            key = self.split_map[split]
            refs = [Row(key, i) for i in range(len(dataset))]
            labels = [""] * len(refs) if names is None else self._labels(split, class_label)
            listed[split] = (refs, labels)
        if not listed["train"][0]:
            raise ConfigError(f"data.path={self.path}: the training split has no rows")
        return listed, names or []

    def _value(self, ref: Row) -> Mapping[str, Any]:
        split = next(s for s in SPLITS if self.split_map[s] == ref.split)
        return self._load()[split][ref.index][self.image_column]

    def open(self, ref: Row) -> Any:
        from PIL import Image

        value = self._value(ref)
        if value is None:
            raise ValueError("no image in this row")
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])

    def describe(self, ref: Row) -> str:
        return f"{self.path} {ref} ({self.image_column})"

    def stamp(self, ref: Row) -> str:
        """The split's fingerprint (``datasets`` changes it when the data change) and row."""
        split = next(s for s in SPLITS if self.split_map[s] == ref.split)
        fingerprint = getattr(self._load()[split], "_fingerprint", "")
        return json.dumps([str(self.path), fingerprint, ref.split, ref.index])

    def place(self, name: str, pool: str) -> str:
        return f"the {self.split_map['train']} split of {self.path}"

    def own(self, split: str) -> str:
        return f"name a split of the data set in data.split_map.{split}"
