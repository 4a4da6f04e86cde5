"""Biased matrix factorization for explicit ratings (Koren, Bell & Volinsky, IEEE Computer 2009).

``r̂(u, i) = μ + b_u + b_i + p_u · q_i``, trained on (user, item, rating) pairs with the mean
squared error plus ``reg`` times the squared L2 norm of the batch's biases and factors (per
pair), the "SVD" of the Netflix prize and of scikit-surprise. Deviations: minibatch updates with
the configured optimizer instead of per-rating SGD (``experiment=rating_ml100k`` uses plain SGD on
the batch-mean loss: with batch B and learning rate η each rating moves its factors by
``2η/B (e·q_i - reg·p_u)``, Surprise's update with ``lr_all = 2η/B``, applied to the batch
at once), and μ is not a hyper-parameter: it is the running mean of the training ratings seen so
far (a buffer, exact after one epoch), so the model needs no dataset statistic at construction.

``predict(user, item)`` gives ratings; ``score`` ranks the whole catalogue by predicted rating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import PairBatch, UserBatch
from recsys.errors import DataError
from recsys.models.base import Recommender, lookup, require


class BiasedMF(Recommender):
    train_batch = "pairs"
    no_features = "a rating model of id biases and factors; use MF or NCF for attributes"
    num_negatives = 0
    represents_users = True
    predicts_pairs = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        reg: float = 0.05,
        bias_reg: float | None = None,
        init_std: float = 0.01,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 0, "embedding_size", embedding_size, "an integer >= 0")
        require(reg >= 0, "reg", reg, ">= 0")
        require(bias_reg is None or bias_reg >= 0, "bias_reg", bias_reg, ">= 0 or null")
        require(init_std > 0, "init_std", init_std, "> 0")
        self.reg = float(reg)
        self.bias_reg = float(reg if bias_reg is None else bias_reg)
        self.user_emb = nn.Embedding(num_users, embedding_size)
        self.item_emb = nn.Embedding(num_items, embedding_size)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer("global_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.float64))

    def _update_mean(self, rating: Tensor) -> None:
        n = self.n_seen + len(rating)
        self.global_mean += (rating.double().sum() - len(rating) * self.global_mean) / n
        self.n_seen.copy_(n)

    def predict(self, user: Tensor, item: Tensor) -> Tensor:
        """(n,) predicted ratings of paired ``user`` and ``item`` ids."""
        dot = (self.user_emb(user) * self.item_emb(item)).sum(-1)
        bias = self.user_bias(user).squeeze(-1) + self.item_bias(item).squeeze(-1)
        return self.global_mean.float() + bias + dot

    def loss(self, batch: PairBatch) -> dict[str, Tensor]:
        if batch.rating is None:
            raise DataError(
                "BiasedMF needs explicit ratings, but the training data has no rating column "
                "(use a dataset with ratings, e.g. data=ml-100k or data=ml-100k-fold)"
            )
        if self.training:
            self._update_mean(batch.rating)
        u, i = batch.user, batch.item
        p, q = lookup(self.user_emb, u), lookup(self.item_emb, i)
        bu, bi = self.user_bias(u).squeeze(-1), self.item_bias(i).squeeze(-1)
        pred = self.global_mean.float() + bu + bi + (p * q).sum(-1)
        mse = F.mse_loss(pred, batch.rating.float())
        l2 = self.reg * (p.pow(2).sum() + q.pow(2).sum()) + self.bias_reg * (
            bu.pow(2).sum() + bi.pow(2).sum()
        )
        return {"loss": mse + l2 / len(u), "mse": mse}

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d + 1) the users' factors and bias."""
        return torch.cat([self.user_emb(users.user), self.user_bias(users.user)], -1)

    def score(self, users: UserBatch) -> Tensor:
        u = users.user
        return (
            self.global_mean.float()
            + self.user_bias(u)  # (B, 1)
            + self.item_bias.weight.T  # (1, I)
            + self.user_emb(u) @ self.item_emb.weight.T
        )  # (B, I)
