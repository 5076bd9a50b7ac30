"""Backbones: output sizes for several image sizes, layer groups that cover every parameter."""

from __future__ import annotations

import pytest
import torch

from ptft.nn.backbone import build_backbone
from ptft.nn.cnn import CNN
from ptft.nn.mlp import MLP


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 13, 17)])
def test_cnn_fits_any_image_size(shape):
    net = CNN(shape, channels=(8, 16, 24))
    out = net(torch.rand(2, *shape))
    assert out.shape == (2, 24) == (2, net.out_dim)


def test_mlp_output_and_groups():
    net = MLP((1, 8, 8), hidden_dims=(32, 16))
    assert net(torch.rand(5, 1, 8, 8)).shape == (5, 16)
    assert net.out_dim == 16
    assert len(net.layer_groups()) == 2


@pytest.mark.parametrize(
    "net", [CNN((1, 8, 8), channels=(8, 16)), MLP((1, 8, 8), hidden_dims=(8, 8, 8))]
)
def test_layer_groups_partition_the_parameters(net):
    grouped = [id(p) for g in net.layer_groups() for p in g.parameters()]
    assert len(grouped) == len(set(grouped)) == len(list(net.parameters()))


def test_build_backbone_from_config_and_bad_target():
    net = build_backbone({"_target_": "ptft.nn.cnn.CNN", "channels": [4, 8]}, (1, 8, 8))
    assert isinstance(net, CNN) and net.out_dim == 8
    with pytest.raises(ValueError, match="cannot import 'ptft.nn.nothing.Net'"):
        build_backbone({"_target_": "ptft.nn.nothing.Net"}, (1, 8, 8))
    with pytest.raises(TypeError, match="not a ptft.nn.backbone.Backbone"):
        build_backbone({"_target_": "torch.nn.Identity"}, (1, 8, 8))
