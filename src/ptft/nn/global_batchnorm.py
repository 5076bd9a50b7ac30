"""Batch normalisation over the batch of every process ("global BN", Chen et al. 2020 §B.9),
on any device: ``torch.nn.SyncBatchNorm`` runs on GPUs only, and on CPU each DDP process
would otherwise normalise over its own share of the batch.

The statistics are reduced with the differentiable ``torch.distributed.nn.all_reduce``, so
the backward pass carries every process's gradient through the shared mean and variance, as
SyncBatchNorm's does: N examples on each of W processes train like one batch of W·N.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm of any input rank ``(B, C, *)`` whose training statistics span all processes."""

    #: the class this layer was converted from, to convert it back (:class:`GlobalBatchNormSync`)
    local_class: type[_BatchNorm] = nn.BatchNorm1d

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(
                f"GlobalBatchNorm expects (batch, channels, ...) input, got {x.dim()}-D"
            )

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)  # evaluation, or one process: plain BatchNorm
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in fp32 under autocast, as BatchNorm keeps them
        local_count = xf.numel() // channels
        # two reductions (the sum, then squared deviations from the global mean) keep the
        # variance exact where E[x²] − E[x]² would cancel digits
        sums = all_reduce(torch.cat([xf.sum(dims), xf.new_full((1,), float(local_count))]))
        count = sums[-1]
        mean = sums[:channels] / count
        centred = xf - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def _convert(module: nn.Module, to_global: bool) -> nn.Module:
    """``module`` with every BatchNorm swapped for its global twin (or back); parameters and
    buffers are the same tensors, so optimizers and state-dict keys are unaffected."""
    for name, child in module.named_children():
        module.add_module(name, _convert(child, to_global))
    if to_global and isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted: _BatchNorm = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        converted.local_class = type(module)
    elif not to_global and isinstance(module, GlobalBatchNorm):
        converted = module.local_class(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
    else:
        return module
    for key in ("weight", "bias"):
        if getattr(module, key, None) is not None:
            setattr(converted, key, getattr(module, key))
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        if getattr(module, key, None) is not None:
            converted.register_buffer(key, getattr(module, key))
    converted.train(module.training)
    return converted


class GlobalBatchNormSync(LayerSync):
    """Lightning's ``sync_batchnorm`` for devices torch's SyncBatchNorm does not run on (CPU):
    pass ``plugins=[GlobalBatchNormSync()]`` instead of ``sync_batchnorm=True``."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _convert(model, to_global=True)

    def revert(self, model: nn.Module) -> nn.Module:
        return _convert(model, to_global=False)
