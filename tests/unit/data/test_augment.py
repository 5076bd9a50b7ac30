"""Batched augmentation: shapes, value range, per-image randomness, device-side batches."""

from __future__ import annotations

import torch

from ptft.data.augment import Augment


def test_views_keep_shape_dtype_and_range():
    x = torch.rand(64, 1, 8, 8)
    aug = Augment()
    v1, v2 = aug(x), aug(x)
    assert v1.shape == x.shape and v1.dtype == x.dtype
    assert v1.min() >= 0.0 and v1.max() <= 1.0
    # two views differ from the input and from each other, image by image
    per_image = (v1 - v2).abs().flatten(1).mean(1)
    assert (per_image > 1e-3).float().mean() > 0.9


def test_three_channel_and_bf16_batches():
    x = torch.rand(8, 3, 32, 32).bfloat16()
    y = Augment()(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16


def test_without_random_parts_it_is_the_identity():
    aug = Augment(degrees=0, translate=0, scale=(1, 1), shear=0, noise_std=0, erase_p=0)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)
