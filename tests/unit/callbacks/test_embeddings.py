"""What the embedding projector embeds: token rows cut to the module's input length (a language
model's batches carry the next token too; a span encoder reads one span of each block), by
hand against the backbone's own mean-pooled features; images pass through whole."""

from __future__ import annotations

import torch

from ptft.callbacks.embeddings import example_features
from ptft.modules.backbone_module import BackboneModule
from ptft.objectives.span_contrastive import SpanContrastive
from tests.unit.objectives.test_span_contrastive import ADAMW, BACKBONE


def test_a_span_encoder_embeds_the_first_span_of_blocks_longer_than_its_positions():
    torch.manual_seed(0)
    # 64-token blocks (65 with the next token) for a backbone of 32 positions: it reads spans
    module = SpanContrastive(BACKBONE, [64], ADAMW, span_length=8).eval()
    assert module.input_shape == (8,)
    blocks = torch.randint(7, 64, (3, 65))
    with torch.no_grad():
        features = example_features(module, blocks)
        expected = module.backbone(blocks[:, :8]).mean(1)
    torch.testing.assert_close(features, expected)


def test_a_language_models_rows_lose_their_next_token():
    torch.manual_seed(0)
    module = BackboneModule(BACKBONE, [16], ADAMW).eval()
    rows = torch.randint(7, 64, (2, 17))
    with torch.no_grad():
        features = example_features(module, rows)
        expected = module.backbone(rows[:, :16]).mean(1)
        # the 17th token changes the features of a bidirectional backbone's first 16
        whole = module.backbone(rows).mean(1)
    torch.testing.assert_close(features, expected)
    assert not torch.allclose(features, whole)


def test_images_are_embedded_whole():
    torch.manual_seed(0)
    cnn = {"_target_": "ptft.nn.cnn.CNN", "channels": [4, 8]}
    module = BackboneModule(cnn, [1, 8, 8], ADAMW).eval()
    images = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(example_features(module, images), module.backbone(images))
