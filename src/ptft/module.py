"""What every objective and task shares, and nothing more: a backbone built from its
config, the optimizer and scheduler completed from partial configs, and the backbone
record written into every checkpoint for the handoff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch

from ptft.nn.backbone import Backbone, build_backbone


def instantiate_partial(config: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Call a ``_target_`` config (``_partial_`` or not) with extra arguments.

    Keys set to ``None`` are left out, so the callee's own default applies (the optimizer
    schema lists ``momentum`` and ``betas``; AdamW takes no momentum, SGD no betas).
    """
    from hydra.utils import instantiate

    config = {k: v for k, v in config.items() if k != "_partial_" and v is not None}
    return instantiate(config, *args, **kwargs)


class BackboneModule(L.LightningModule):
    """A LightningModule whose features come from ``self.backbone``."""

    #: whether training batches carry labels; pretraining objectives never see them
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        backbone: Mapping[str, Any],
        input_shape: Sequence[int],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone_config = dict(backbone)
        self.input_shape = tuple(input_shape)
        self.optimizer_config = dict(optimizer)
        self.scheduler_config = dict(scheduler) if scheduler else None
        self.backbone: Backbone = build_backbone(self.backbone_config, self.input_shape)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = instantiate_partial(self.optimizer_config, self.trainable_parameters())
        if not self.scheduler_config:
            return optimizer
        scheduler = instantiate_partial(
            self.scheduler_config, optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The handoff rebuilds the backbone from this record: no need to repeat its config.
        checkpoint["ptft_backbone"] = {
            "config": dict(self.backbone_config),
            "input_shape": list(self.input_shape),
            "module": f"{type(self).__module__}.{type(self).__qualname__}",
        }
