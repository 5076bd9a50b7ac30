"""data=image_folder: the layouts, stratified splits, class names, decoding (grayscale, RGB,
resize), normalisation statistics against numpy, bad images, and each bad input's one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ptft.data import protocol
from ptft.data.image_folder import ImageFolderDataModule
from ptft.errors import ConfigError

CLASSES = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}


def write_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 8) -> None:
    """A noisy image of ``colour`` (so that statistics are not trivial)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-25, 26, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)


def class_tree(root: Path, per_class: int = 12, classes=CLASSES) -> Path:
    for c, (name, colour) in enumerate(classes.items()):
        for i in range(per_class):
            write_image(root / name / f"{i:02d}.png", colour, seed=100 * c + i)
    return root


def make(root: Path | None, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("image_size", 8)
    dm = ImageFolderDataModule(root=None if root is None else str(root), **kwargs)
    dm.setup()
    return dm


def batch_of(dm: ImageFolderDataModule, split: str) -> tuple[torch.Tensor, ...]:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    return next(iter(loader[split]()))


def test_stratified_split_sizes_and_class_names(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptft.data.image_folder"):
        dm = make(class_tree(tmp_path), test_fraction=0.25, val_fraction=1 / 3)
    assert dm.label_names == ["cat", "dog", "owl"] == protocol.label_names(dm)
    sizes = {s: len(dm.indices[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 18, "val": 9, "test": 9}
    for split, per_class in (("train", 6), ("val", 3), ("test", 3)):  # stratified
        paths, labels = dm.files[split]
        assert np.bincount(labels).tolist() == [per_class] * 3
        assert [p.parent.name for p in paths] == [dm.label_names[y] for y in labels]
    every = [p for s in ("train", "val", "test") for p in dm.files[s][0]]
    assert len(set(every)) == 36  # disjoint, and all of them
    assert "train 18, val 9, test 9 images; 3 classes" in caplog.text
    assert dm.manifest["classes"] == ["cat", "dog", "owl"]
    again = make(tmp_path, test_fraction=0.25, val_fraction=1 / 3)
    assert again.files["val"][0] == dm.files["val"][0]  # seeded
    other = make(tmp_path, test_fraction=0.25, val_fraction=1 / 3, split_seed=1)
    assert other.files["val"][0] != dm.files["val"][0]


def test_batches_are_rgb_labelled_and_in_0_1(tmp_path):
    dm = make(class_tree(tmp_path), batch_size=4)
    x, y = batch_of(dm, "train")
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0
    # the colour of each image says its class: the dominant channel is the label
    assert torch.equal(x.mean(dim=(2, 3)).argmax(1), y)


def test_grayscale_and_resize(tmp_path):
    dm = make(class_tree(tmp_path), channels=1, image_size=5, eval_batch_size=100)
    x, y = batch_of(dm, "test")
    assert x.shape[1:] == (1, 5, 5)
    path = dm.files["test"][0][0]
    expected = Image.open(path).convert("L").resize((5, 5), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(x[0, 0].numpy(), np.asarray(expected) / 255.0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"data.input_shape=\[3, 5, 5\] but data.channels=1"):
        ImageFolderDataModule(root=str(tmp_path), channels=1, image_size=5, input_shape=[3, 5, 5])


def test_label_fraction_keeps_a_stratified_share_of_train(tmp_path):
    dm = make(class_tree(tmp_path), label_fraction=0.5, test_fraction=0.25, val_fraction=1 / 3)
    kept = dm.files["train"][1][dm.indices["train"]]
    assert np.bincount(kept).tolist() == [3, 3, 3]
    assert len(dm.dataset("train", train=True)) == 9
    # a pretraining run reads every training image, without labels
    pre = make(tmp_path, label_fraction=0.5, with_labels=False, batch_size=4)
    assert len(pre.dataset("train", train=True)) == 25
    assert len(batch_of(pre, "train")) == 1 and len(batch_of(pre, "val")) == 2


def test_normalisation_statistics_match_numpy_and_are_cached(tmp_path):
    cache = tmp_path / "cache"
    dm = make(class_tree(tmp_path / "data"), normalize=True, cache_dir=str(cache), image_size=6)
    # computed independently: every training image, resized, as one array
    pixels = np.stack(
        [
            np.asarray(
                Image.open(p).convert("RGB").resize((6, 6), Image.Resampling.BILINEAR),
                dtype=np.float64,
            )
            / 255.0
            for p in dm.files["train"][0]
        ]
    )
    np.testing.assert_allclose(dm.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(dm.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    (entry,) = cache.glob("stats_*.json")
    assert json.loads(entry.read_text())["images"] == len(dm.files["train"][0])
    x = torch.cat([b[0] for b in dm.train_dataloader()] + [])
    assert x.mean().abs() < 0.5  # standardised
    # read back from the cache (a tampered entry proves it was not recomputed)
    entry.write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}))
    again = make(tmp_path / "data", normalize=True, cache_dir=str(cache), image_size=6)
    assert again.mean == [0.5] * 3 and again.std == [0.25] * 3
    # another size is another key
    make(tmp_path / "data", normalize=True, cache_dir=str(cache), image_size=4)
    assert len(list(cache.glob("stats_*.json"))) == 2
    # given statistics are used as they are
    given = make(tmp_path / "data", normalize=True, mean=[0.5], std=[0.5], eval_batch_size=100)
    x, _ = batch_of(given, "test")
    raw, _ = batch_of(make(tmp_path / "data", eval_batch_size=100), "test")
    torch.testing.assert_close(x, (raw - 0.5) / 0.5)


def test_split_folders_are_used_as_they_are(tmp_path):
    class_tree(tmp_path / "train", per_class=6)
    class_tree(tmp_path / "val", per_class=2)
    class_tree(tmp_path / "test", per_class=3, classes={"dog": CLASSES["dog"]})
    dm = make(tmp_path)
    assert {s: len(dm.indices[s]) for s in ("train", "val", "test")} == {
        "train": 18,
        "val": 6,
        "test": 3,
    }
    assert all(p.parts[-3] == "test" for p in dm.files["test"][0])
    assert dm.files["test"][1].tolist() == [1, 1, 1]  # dog's label is its index in train/


def test_unlabelled_folder_nested_or_flat(tmp_path):
    for i in range(10):
        write_image(tmp_path / ("a/b" if i % 2 else "") / f"{i}.png", (90, 90, 90), seed=i)
    dm = make(tmp_path, unlabelled=True, with_labels=False, batch_size=4, test_fraction=0.2)
    assert dm.label_names == [] and protocol.label_names(dm) is None
    assert {s: len(dm.indices[s]) for s in ("train", "val", "test")} == {
        "train": 7,
        "val": 1,
        "test": 2,
    }
    for split in ("train", "val", "test"):
        assert len(batch_of(dm, split)) == 1  # (x,): no labels anywhere
    with pytest.raises(ConfigError, match="data.unlabelled=true: the images .* have no labels"):
        ImageFolderDataModule(root=str(tmp_path), unlabelled=True, with_labels=True)
    with pytest.raises(ConfigError, match="model.online_probe needs labelled images"):
        ImageFolderDataModule(
            root=str(tmp_path), unlabelled=True, with_labels=False, monitor_labels=True
        )
    with pytest.raises(ConfigError, match="holds images directly .* data.unlabelled=true"):
        make(tmp_path)


@pytest.mark.parametrize("on_bad_image", ["skip", "error"])
def test_a_corrupt_image_is_skipped_or_refused(tmp_path, caplog, on_bad_image):
    class_tree(tmp_path)
    bad = tmp_path / "dog" / "05.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    if on_bad_image == "error":
        with pytest.raises(ConfigError, match=r"dog/05.png: not a readable image") as err:
            make(tmp_path, on_bad_image="error")
        assert "\n" not in str(err.value)
        return
    with caplog.at_level(logging.INFO, logger="ptft.data.image_folder"):
        dm = make(tmp_path, on_bad_image="skip")
    assert "skipped 1 unreadable image(s) of 36" in caplog.text
    assert "1 unreadable skipped" in caplog.text
    every = [p for s in ("train", "val", "test") for p in dm.files[s][0]]
    assert len(every) == 35 and bad not in every


def one_line(match: str):
    return pytest.raises(ConfigError, match=match)


def test_bad_inputs_each_fail_in_one_line(tmp_path):
    with one_line("data.root=.*nope: no such directory"):
        make(tmp_path / "nope")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    with one_line("holds no images"):
        make(tmp_path / "empty")
    small = class_tree(tmp_path / "small", per_class=6)
    for extra in range(2, 6):
        (small / "owl" / f"{extra:02d}.png").unlink()
    with one_line(r"class owl has 2 image\(s\) in owl/, fewer than the 3 .* needs"):
        make(small)
    make(small, test_fraction=0.0, val_fraction=0.25)  # train and val: two a class will do
    (small / "emu").mkdir()
    with one_line(r"class emu has 0 image\(s\) in emu/"):
        make(small, test_fraction=0.0, val_fraction=0.25)
    with one_line(r"data.num_classes=4 but .* has 3 classes \(cat, dog, owl\); drop data.num_"):
        make(class_tree(tmp_path / "three"), num_classes=4)
    split = tmp_path / "split"
    class_tree(split / "train", per_class=4, classes={"cat": CLASSES["cat"]})
    class_tree(split / "val", per_class=2, classes={"cat": CLASSES["cat"], "emu": (9, 9, 9)})
    with one_line("val has class.*emu that train does not have"):
        make(split)
    with one_line("data.mean and data.std go together"):
        ImageFolderDataModule(root=str(tmp_path), mean=[0.5])
    with one_line(r"data.std=\[0.1, 0.2\]: one value, or one per channel"):
        ImageFolderDataModule(root=str(tmp_path), mean=[0.5], std=[0.1, 0.2])


# -- a Hugging Face image data set (data.path) ---------------------------------------------
def hf_images(root: Path, per_class: int = 12, class_label: bool = True, splits=("train",)) -> Path:
    """A ``save_to_disk`` data set of PNG-encoded images: an ``image`` column and a ``label``
    column (a ``ClassLabel``, or the class names as strings)."""
    import datasets

    tree = class_tree(root / "pngs", per_class=per_class)
    names = sorted(CLASSES)
    rows = [(str(p), names.index(p.parent.name)) for p in sorted(tree.rglob("*.png"))]
    label = datasets.ClassLabel(names=names) if class_label else datasets.Value("string")
    features = datasets.Features(
        {"image": datasets.Image(), "label": label, "note": datasets.Value("string")}
    )
    parts = {}
    for split in splits:
        parts[split] = datasets.Dataset.from_dict(
            {
                "image": [p for p, _ in rows],
                "label": [y if class_label else names[y] for _, y in rows],
                "note": ["x"] * len(rows),
            },
            features=features,
        )
    datasets.DatasetDict(parts).save_to_disk(str(root / "ds"))
    return root / "ds"


def test_a_hugging_face_data_set_reads_as_a_folder_does(tmp_path):
    pytest.importorskip("datasets")
    path = hf_images(tmp_path)
    dm = make(None, path=str(path), cache_dir=str(tmp_path / "cache"), eval_batch_size=100)
    assert dm.label_names == ["cat", "dog", "owl"]
    folder = make(tmp_path / "pngs", eval_batch_size=100)
    # the same images, the same order (sorted by class, then file), so the same seeded split
    for split in ("train", "val", "test"):
        assert dm.files[split][1].tolist() == folder.files[split][1].tolist()
    x, y = batch_of(dm, "test")
    x_folder, y_folder = batch_of(folder, "test")
    torch.testing.assert_close(x, x_folder)  # decoded from the bytes in the arrow table
    assert torch.equal(y, y_folder)
    assert ImageFolderDataModule.count_classes({"path": str(path), "cache_dir": None}) == 3


def test_hugging_face_string_labels_splits_and_bad_columns(tmp_path):
    pytest.importorskip("datasets")
    path = hf_images(tmp_path, per_class=4, class_label=False, splits=("train", "validation"))
    dm = make(None, path=str(path), test_fraction=0.25)
    assert dm.label_names == ["cat", "dog", "owl"]  # the strings, sorted
    # validation is the data set's own; test is drawn from train, stratified
    assert {s: len(dm.indices[s]) for s in ("train", "val", "test")} == {
        "train": 9,
        "val": 12,
        "test": 3,
    }
    with one_line(
        "data.image_column=picture: .* has no such column; its columns are image, label, note"
    ):
        make(None, path=str(path), image_column="picture")
    with one_line("data.label_column=kind: .* has no such column"):
        make(None, path=str(path), label_column="kind")
    with one_line(r"data.image_column=note: .* holds Value values there, not images"):
        make(None, path=str(path), image_column="note")
    with one_line(
        "data.split_map.train=training: .* has no such split; set it to one of train, validation"
    ):
        make(None, path=str(path), split_map={"train": "training"})
    with one_line("give the images one way: data.root=DIR .* got both"):
        make(tmp_path, path=str(path))
    with one_line("data.path=./missing: no such folder"):
        make(None, path="./missing")


def test_a_corrupt_image_in_a_data_set_is_named_by_its_row(tmp_path, caplog):
    datasets = pytest.importorskip("datasets")
    good = class_tree(tmp_path / "pngs", per_class=4)
    images = [{"bytes": p.read_bytes(), "path": None} for p in sorted(good.rglob("*.png"))]
    images[5] = {"bytes": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    labels = [i // 4 for i in range(12)]
    part = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "ds"))
    with one_line(r"ds train\[5\] \(image\): not a readable image"):
        make(None, path=str(tmp_path / "ds"))
    with caplog.at_level(logging.INFO, logger="ptft.data.image_folder"):
        dm = make(None, path=str(tmp_path / "ds"), on_bad_image="skip", val_fraction=0.4)
    assert "skipped 1 unreadable image(s) of 12" in caplog.text  # in train and in test
    assert dm.label_names == ["0", "1", "2"]  # int labels, in numeric order
    assert len(dm.indices["test"]) == 11
