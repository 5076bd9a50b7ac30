"""The train/val/test DataLoaders every ptft datamodule serves, built in one place."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class SplitLoaders(L.LightningDataModule):
    """Serves ``dataset(split, train)`` for each stage; subclasses set ``batch_size``,
    ``eval_batch_size`` and ``num_workers`` and implement ``dataset``."""

    batch_size: int
    eval_batch_size: int
    num_workers: int

    def dataset(self, split: str, train: bool) -> Dataset:
        raise NotImplementedError

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train)
        batch_size = self.batch_size if train else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
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
