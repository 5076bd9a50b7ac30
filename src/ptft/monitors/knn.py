"""k-nearest-neighbour classification of features: the online kNN monitor's vote.

The protocol of Wu et al. (2018) as used by DINO (Caron et al. 2021): features are
L2-normalised, neighbours are the ``k`` training features of highest cosine similarity,
and each neighbour votes for its label with weight ``exp(similarity / temperature)``
(``temperature=None``: one vote each, as scikit-learn's ``weights="uniform"``). Ties go
to the smallest class index, as in scikit-learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int,
    temperature: float | None,
    num_classes: int,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted class ``(Q,)`` of each query ``(Q, D)`` from a labelled bank ``(N, D)``, ``(N,)``.

    Queries are scored ``chunk_size`` at a time, so the ``(Q, N)`` similarity matrix of a
    large data set is never held whole.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature is not None and temperature <= 0:
        raise ValueError(
            f"temperature must be positive (or None for uniform votes), got {temperature}"
        )
    k = min(k, len(train_features))
    bank = F.normalize(train_features, dim=1)
    labels = train_labels.to(bank.device, torch.long)
    predictions = []
    for queries in F.normalize(query_features.to(bank.device, bank.dtype), dim=1).split(chunk_size):
        similarity, index = (queries @ bank.T).topk(k, dim=1)
        votes = (
            torch.ones_like(similarity) if temperature is None else (similarity / temperature).exp()
        )
        scores = similarity.new_zeros(len(queries), num_classes).scatter_add_(
            1, labels[index], votes
        )
        predictions.append(scores.argmax(dim=1))  # the first maximum: the smallest class wins a tie
    return torch.cat(predictions) if predictions else labels.new_empty(0)
