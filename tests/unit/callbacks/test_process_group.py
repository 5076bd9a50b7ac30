"""The process group is closed (after a barrier) before a worker exits."""

from __future__ import annotations

import torch.distributed as dist

from ptft.callbacks.process_group import close_process_group


def test_close_process_group_destroys_an_initialized_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()
    close_process_group()  # without a group it does nothing
