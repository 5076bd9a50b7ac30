"""scikit-learn's handwritten digits: 1,797 real 8×8 images shipped with the package."""

from __future__ import annotations

import numpy as np

from ptft.data.images import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """``load_digits`` scaled to [0, 1]; no official test split, so one is drawn (stratified)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("input_shape", (1, 8, 8))
        kwargs.setdefault("num_classes", 10)
        super().__init__(**kwargs)

    def load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8), pixels 0..16
        return (images, digits.target.astype(np.int64)), None
