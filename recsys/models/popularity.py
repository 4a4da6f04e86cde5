"""Popularity baseline: every user gets the items ranked by their training interaction count."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.data.batches import UserBatch
from recsys.models.base import Recommender


class Popularity(Recommender):
    """Closed form: ``fit`` counts training events per item; no trainable parameters."""

    train_batch = None
    no_features = "it ranks by training counts alone"
    scores_history = True  # the same scores for every user and history

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        self.register_buffer("counts", torch.zeros(num_items))

    def fit(self, train: Tensor) -> None:
        """``train``: (num_users, num_items) sparse tensor of training events."""
        counts = torch.sparse.sum(train, dim=0).to_dense()
        self.counts.copy_(counts.to(self.counts))

    def score(self, users: UserBatch) -> Tensor:
        return self.counts.expand(len(users.user), -1)  # (B, I)
