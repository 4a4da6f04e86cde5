"""Matrix factorization: dot products of learned user and item factors.

Loss ``bpr`` is Bayesian Personalized Ranking (Rendle et al., UAI 2009):
``-log σ(s(u, i) - s(u, j))`` for a training pair (u, i) and a sampled item j the user has not
interacted with in training, averaged over the ``num_negatives`` negatives of each pair, plus
``reg`` times the squared L2 norm of the factors in the batch (per pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import PairBatch, UserBatch
from recsys.models.base import Recommender, require


class MF(Recommender):
    train_batch = "pairs"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        loss: str = "bpr",
        num_negatives: int = 1,
        reg: float = 0.0,
        init_std: float = 0.1,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        require(loss in ("bpr",), "loss", loss, "one of: bpr")
        require(num_negatives >= 1, "num_negatives", num_negatives, "an integer >= 1")
        require(reg >= 0, "reg", reg, ">= 0")
        require(init_std > 0, "init_std", init_std, "> 0")
        self.loss_name = loss
        self.num_negatives = int(num_negatives)
        self.reg = float(reg)
        self.user_emb = nn.Embedding(num_users, embedding_size)
        self.item_emb = nn.Embedding(num_items, embedding_size)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)

    def loss(self, batch: PairBatch) -> dict[str, Tensor]:
        u = self.user_emb(batch.user)  # (B, d)
        pos = self.item_emb(batch.item)  # (B, d)
        neg = self.item_emb(batch.neg)  # (B, N, d)
        s_pos = (u * pos).sum(-1, keepdim=True)  # (B, 1)
        s_neg = torch.einsum("bd,bnd->bn", u, neg)  # (B, N)
        bpr = -F.logsigmoid(s_pos - s_neg).mean()
        out = {"loss": bpr, "bpr": bpr}
        if self.reg:
            l2 = (u.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum() / neg.shape[1]) / len(u)
            out["loss"] = bpr + self.reg * l2
        return out

    def score(self, users: UserBatch) -> Tensor:
        return self.user_emb(users.user) @ self.item_emb.weight.T  # (B, I)
