"""Image grids, and the autoencoder's reconstructions in TensorBoard."""

from __future__ import annotations

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptft.monitors.images import image_grid
from ptft.runs.fit import train
from tests.helpers import QUIET, compose_train


def test_image_grid_places_each_image_in_its_cell():
    images = torch.rand(5, 1, 3, 4)
    grid = image_grid(images, ncol=2, pad=1)
    assert grid.shape == (1, 3 * (3 + 1) + 1, 2 * (4 + 1) + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        top, left = 1 + r * 4, 1 + c * 5
        torch.testing.assert_close(grid[:, top : top + 3, left : left + 4], images[i])
    assert (
        grid[:, 0, :].eq(1).all() and grid[:, 9:, 6:].eq(1).all()
    )  # padding and the empty cell are white


def test_autoencoder_logs_inputs_and_reconstructions(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_autoencoder",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=1",
            "model.num_logged_images=8",
            "test=false",
            *QUIET,
        ],
        tmp_path,
    )
    train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "val/reconstructions" in events.Tags()["images"]
    image = events.Images("val/reconstructions")[-1]
    # 8 inputs over 8 reconstructions, 8x8 pixels each, 1-pixel padding
    assert (image.height, image.width) == (2 * 9 + 1, 8 * 9 + 1)
    assert "val/loss" in events.Tags()["scalars"] and "train/loss" in events.Tags()["scalars"]
