"""What a datamodule may offer ptft, beyond Lightning's ``LightningDataModule``.

Any ``LightningDataModule`` trains: ``data._target_`` names its class, built by
:func:`ptft.runs.build.build_datamodule` from the ``data.*`` keys plus the keyword
arguments the run supplies (never the user):

* ``with_labels: bool`` (every datamodule takes it): whether the model is supervised
  (``BackboneModule.supervised``). A fine-tuning task reads labelled training batches
  ``(x, y)`` of the labelled subset (``data.label_fraction``); a pretraining objective
  reads every training example, without labels ``(x,)``. Data without labels accepts it
  and ignores it.
* ``monitor_labels: bool`` (only :class:`LabelledTrainData` takes it): a pretraining run
  whose online probe reads labels gets training batches ``(x, y)`` of every training
  example (the probe only sees detached features).

Everything else is optional, and each capability is a small runtime-checkable protocol
below; the code that uses one checks ``isinstance(datamodule, …)`` (a protocol's data
members are checked by name) and does without it otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Batched(Protocol):
    """Data whose training batch size is known."""

    #: examples in a training batch on one device (``model.lr_scaling`` multiplies it by
    #: the devices and the accumulated batches to get the global batch)
    batch_size: int


@runtime_checkable
class Tokenized(Protocol):
    """Text data encoded with a ``tokenizer.json``."""

    #: the ``tokenizer.json`` the data is encoded with (None until ``setup``); the run
    #: copies it into its directory and every checkpoint, so that a fine-tune encodes text
    #: exactly as its pretraining did, and a language model decodes what it generates
    tokenizer_path: Path | str | None


@runtime_checkable
class Manifested(Protocol):
    """Data that describes what it read."""

    #: corpus version, hashes, split sizes (empty until ``setup``): written to
    #: ``data_manifest.json`` in the run directory and into every checkpoint
    manifest: dict[str, Any]


@runtime_checkable
class LabelNamed(Protocol):
    """Classification data whose classes have names."""

    #: the class names, in label-index order (empty until ``setup``): stored in every
    #: checkpoint, shown by ``ptft-eval``'s report and the TensorBoard projector
    label_names: Sequence[str]


@runtime_checkable
class LabelledTrainData(Protocol):
    """Data that can label its training examples for monitoring a pretraining run (the
    image datamodules); its constructor takes ``monitor_labels``."""

    def labelled_train_dataloader(self) -> Iterable[tuple[Any, Any]]:
        """Every training example ``(x, y)``, in order, for the online kNN's bank (no
        pretraining loss reads from it)."""
        ...


def per_device_batch_size(datamodule: Any) -> int | None:
    """The datamodule's training batch size on one device, None when it has none."""
    return datamodule.batch_size if isinstance(datamodule, Batched) else None


def tokenizer_path(datamodule: Any) -> Path | None:
    """The datamodule's ``tokenizer.json``, None when it has none (or before ``setup``)."""
    if isinstance(datamodule, Tokenized) and datamodule.tokenizer_path:
        return Path(datamodule.tokenizer_path)
    return None


def manifest(datamodule: Any) -> dict[str, Any] | None:
    """The datamodule's manifest, None when it has none (or an empty one)."""
    return (datamodule.manifest or None) if isinstance(datamodule, Manifested) else None


def label_names(datamodule: Any) -> list[str] | None:
    """The datamodule's class names, None when it has none (or an empty list)."""
    return (list(datamodule.label_names) or None) if isinstance(datamodule, LabelNamed) else None
