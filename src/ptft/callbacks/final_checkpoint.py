"""Make ``last.ckpt`` hold the weights a run ended with.

Lightning 2.6 rewrites ``last.ckpt`` only when it also saves a top-k checkpoint (when the
monitored metric improves), so after a run whose best epoch came early, ``last.ckpt`` holds
that epoch. ptft reads ``last.ckpt`` as a run's final weights (``model.pretrained=<run dir>``,
resuming), so it is written once more when training ends.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class FinalCheckpoint(L.Callback):
    """At the end of fit, save ``last.ckpt`` next to the checkpoint callback's other files."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if (
            callback is None
            or not callback.save_last
            or not callback.dirpath
            or trainer.sanity_checking
        ):
            return
        if trainer.fast_dev_run:
            return  # Lightning writes no checkpoints in a fast_dev_run
        if not getattr(callback, "_last_checkpoint_saved", ""):
            # no last.ckpt yet (no validation ran): Lightning's callback writes it when training
            # ends, after this one; writing it here would make that one a last-v1.ckpt
            return
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        # already saved at this very step (the metric improved last): keep Lightning's own file
        if (
            getattr(callback, "_last_global_step_saved", None) == trainer.global_step
            and path.is_file()
        ):
            return
        trainer.save_checkpoint(str(path))  # rank 0 writes; every rank calls
