"""The train/val/test DataLoaders every ptft datamodule serves, built in one place, with a
training order that a resumed run can take up where it stopped.

The training set is shuffled by :class:`EpochSampler`: the permutation of epoch ``e`` is a
function of a seed and ``e`` alone (as with ``DistributedSampler``), so a resumed run knows
the order of any epoch without replaying the ones before it, and it can start the epoch it
stopped in at the first example it had not seen (:meth:`SplitLoaders.resume_order`, called by
:class:`ptft.callbacks.resume.ResumeState`). The seed is the run's (``seed``, through
``torch.initial_seed()`` when the sampler is first made) and goes into every checkpoint.

These loaders draw nothing from the global random number generators: each has a generator of
its own (a ``DataLoader`` otherwise takes a worker seed from the global one whenever an epoch
or an evaluation starts), so the numbers a training step draws (dropout, augmentations) do not
depend on how often the run validates, nor on whether it was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

#: mixes the epoch into the sampler's seed: distinct (seed, epoch) pairs give distinct seeds
_EPOCH_STRIDE = 1_000_003


class EpochSampler(RandomSampler):
    """A random permutation of ``data_source`` per epoch, drawn from ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before each epoch. :meth:`start_at` makes the next
    iteration begin at position ``start`` of the permutation of ``epoch`` (a resumed run skips
    the examples its epoch already trained on); iterations after it start at 0. A subclass of
    ``RandomSampler``, so that Lightning treats the loader as shuffled (under DDP it puts its
    ``DistributedSampler`` in its place, which is a function of the seed and epoch as well).
    """

    def __init__(self, data_source: Sized, seed: int, epoch: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def start_at(self, epoch: int, start: int) -> None:
        self.epoch, self._start = int(epoch), int(start)

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed((self.seed * _EPOCH_STRIDE + epoch) % 2**64)
        return torch.randperm(len(self.data_source), generator=generator)

    def __iter__(self) -> Iterator[int]:
        # the body runs at the first next(): the epoch and start are read then, once
        start, self._start = self._start, 0
        yield from self.permutation(self.epoch)[start:].tolist()

    def __len__(self) -> int:
        return len(self.data_source)  # a whole epoch, even when it starts part-way


class SplitLoaders(L.LightningDataModule):
    """Serves ``dataset(split, train)`` for each stage; subclasses set ``batch_size``,
    ``eval_batch_size`` and ``num_workers`` and implement ``dataset``.

    A subclass that builds its own loaders passes ``**self.sampling(dataset, train)`` to its
    ``DataLoader`` (in place of ``shuffle=train``) to keep a resumable training order."""

    batch_size: int
    eval_batch_size: int
    num_workers: int

    #: where the next training loader starts: {"seed", "epoch", "start"} (set when resuming)
    _order: dict[str, int] | None = None

    def dataset(self, split: str, train: bool) -> Dataset:
        raise NotImplementedError

    def sampling(self, dataset: Sized, train: bool) -> dict[str, Any]:
        """The ``DataLoader`` arguments that order ``dataset``: a resumable shuffle for training,
        the stored order for evaluation; a generator of the loader's own either way."""
        if not train:
            return {"shuffle": False, "generator": torch.Generator().manual_seed(0)}
        order = self._order or {}
        seed = order.get("seed", torch.initial_seed())  # the run's seed, after seed_everything
        sampler = EpochSampler(dataset, seed, epoch=order.get("epoch", 0))
        sampler.start_at(order.get("epoch", 0), order.get("start", 0))
        self._order = {"seed": sampler.seed}  # a later loader (a reload) starts afresh
        return {"sampler": sampler, "generator": torch.Generator().manual_seed(sampler.seed)}

    def resume_order(self, order: Mapping[str, int]) -> None:
        """Start the next training loader at ``order`` (``seed``, ``epoch``, ``start``: the
        position in that epoch's permutation, in examples), as saved by a checkpoint."""
        self._order = {key: int(order[key]) for key in ("seed", "epoch", "start")}

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train)
        batch_size = self.batch_size if train else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            **self.sampling(dataset, train),
            # a last batch of one breaks batch norm; dropping a partial batch is harmless
            # when the data set is larger than a batch (it is reshuffled every epoch)
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
