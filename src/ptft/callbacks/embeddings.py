"""Send the backbone's features of the validation set to TensorBoard's embedding projector.

At the end of fitting, up to ``max_items`` validation examples are embedded with the
backbone (eval mode, no gradient) and written with ``add_embedding``: the features, the
labels as metadata (class names when the data has them) and, for images, the images
themselves as the sprite. The projector (PCA, t-SNE, UMAP) then shows at a glance whether
the classes separate. Nothing happens without a TensorBoard logger.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ptft.config.bounds import NonEmptyStr, NonNegativeInt
from ptft.data import protocol

log = logging.getLogger(__name__)


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(inputs, one label per example or None)`` of a ``(x,)``, ``(x, y)`` or bare batch."""
    if isinstance(batch, Tensor):
        return batch, None
    x = batch[0]
    y = batch[1] if len(batch) > 1 else None
    if y is not None and not (y.ndim == 1 and len(y) == len(x)):
        y = None  # per-token labels (language models) are not a label of the example
    return x, y


def example_features(module: L.LightningModule, x: Tensor) -> Tensor:
    """One feature vector per example: the module's own ``features`` when it has them
    (a classifier pools as its head reads), else the backbone's, token features averaged.
    Token rows are cut to the module's input length: a language model's batches carry one
    token more (the next one), a span encoder reads a span of each block."""
    shape = getattr(module, "input_shape", None)
    if shape and len(shape) == 1 and x.ndim == 2 and not x.is_floating_point():
        x = x[:, : shape[0]]
    features = module.features(x) if hasattr(module, "features") else module.backbone(x)
    return features.mean(dim=1) if features.ndim == 3 else features


class EmbeddingProjector(L.Callback):
    """Writes ``max_items`` validation embeddings (tag ``tag``) when fitting ends."""

    def __init__(
        self, max_items: NonNegativeInt = 1000, tag: NonEmptyStr = "val/embedding"
    ) -> None:
        self.max_items = max_items
        self.tag = tag

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = next(
            (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None
        )
        datamodule = trainer.datamodule
        if (
            tensorboard is None
            or datamodule is None
            or not trainer.is_global_zero
            or self.max_items <= 0
        ):
            return
        features, labels, images = self.embed(pl_module, datamodule.val_dataloader())
        if not len(features):
            return
        names: Sequence[str] | None = protocol.label_names(datamodule)
        metadata = None
        if labels is not None:
            metadata = [names[i] if names else str(i) for i in labels.tolist()]
        tensorboard.experiment.add_embedding(
            features,
            metadata=metadata,
            label_img=images,
            global_step=trainer.global_step,
            tag=self.tag,
        )
        log.info(
            "wrote %d validation embeddings to TensorBoard's projector (%s)",
            len(features),
            self.tag,
        )

    @torch.no_grad()
    def embed(
        self, module: L.LightningModule, loader: Any
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Features ``(N, D)``, labels ``(N,)`` and images ``(N, C, H, W)`` of the first
        ``max_items``."""
        was_training = module.training
        module.eval()
        features, labels, images = [], [], []
        count = 0
        try:
            for batch in loader:
                x, y = split_batch(batch)
                x = x[: self.max_items - count]
                # the module's dtype, for runs with low-precision weights (bf16-true)
                dtype = next(module.parameters()).dtype if x.is_floating_point() else None
                features.append(
                    example_features(module, x.to(device=module.device, dtype=dtype)).float().cpu()
                )
                if y is not None:
                    labels.append(y[: len(x)].cpu())
                if x.ndim == 4 and x.is_floating_point():  # images in [0, 1]: the sprite
                    images.append(x.float().clamp(0, 1).cpu())
                count += len(x)
                if count >= self.max_items:
                    break
        finally:
            module.train(was_training)
        if not features:
            return torch.empty(0), None, None
        return (
            torch.cat(features),
            torch.cat(labels) if len(labels) == len(features) else None,
            torch.cat(images) if len(images) == len(features) else None,
        )
