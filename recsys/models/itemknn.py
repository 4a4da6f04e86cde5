"""Item-based k-nearest-neighbours (Sarwar et al., WWW 2001; Deshpande & Karypis, TOIS 2004).

Closed form, no training loop. ``fit`` computes the cosine similarity of the items' columns in
the (users × items) training matrix ``X``,

    sim(i, j) = x_i · x_j / (‖x_i‖ ‖x_j‖ + shrink),

and keeps, for every target item ``j``, its ``k`` most similar other items (``shrink`` damps
similarities resting on few co-occurrences). A user's score for ``j`` sums the similarities of
the user's history items among ``j``'s neighbours: ``s(u, j) = Σ_{i ∈ N_k(j)} x_ui sim(i, j)``.

Similarities are computed in blocks of target items, so memory is O(block × I + I × k), never
I × I.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.data.batches import UserBatch
from recsys.models.base import Recommender, require


class ItemKNN(Recommender):
    train_batch = None
    no_features = "item-item similarities from co-occurrence only, no item vector to extend"
    scores_history = True  # sums over the history's neighbours

    def __init__(
        self, num_users: int, num_items: int, k: int = 100, shrink: float = 0.0, block: int = 1024
    ):
        super().__init__(num_users, num_items)
        require(k >= 1, "k", k, "an integer >= 1")
        require(shrink >= 0, "shrink", shrink, ">= 0")
        require(block >= 1, "block", block, "an integer >= 1")
        self.k = min(int(k), max(1, num_items - 1))
        self.shrink = float(shrink)
        self.block = int(block)
        # row j: the neighbours of target item j and their similarities
        self.register_buffer("nbr_idx", torch.zeros(num_items, self.k, dtype=torch.long))
        self.register_buffer("nbr_sim", torch.zeros(num_items, self.k))

    def fit(self, train: Tensor) -> None:
        """``train``: (num_users, num_items) sparse tensor of training events."""
        x = train.coalesce().float()
        x = torch.sparse_coo_tensor(x.indices(), torch.ones_like(x.values()), x.shape).coalesce()
        xt = x.t().coalesce()  # (I, U)
        norms = torch.sqrt(torch.sparse.sum(x * x, dim=0).to_dense())  # (I,)
        dev = self.nbr_idx.device
        for start in range(0, self.num_items, self.block):
            stop = min(start + self.block, self.num_items)
            cols = x.index_select(
                1, torch.arange(start, stop, device=x.device)
            ).to_dense()  # (U, b)
            co = torch.sparse.mm(xt, cols).T  # (b, I): co-occurrences of block items with all items
            sim = co / (norms[start:stop, None] * norms[None, :] + self.shrink).clamp_min(1e-12)
            sim[torch.arange(stop - start), torch.arange(start, stop)] = 0.0  # no self-similarity
            top = torch.topk(sim, self.k, dim=1)
            self.nbr_idx[start:stop] = top.indices.to(dev)
            self.nbr_sim[start:stop] = top.values.to(dev)

    def similarity(self) -> Tensor:
        """(I, I) sparse ``W`` with ``W[i, j] = sim(i, j)`` for ``i`` among ``j``'s neighbours."""
        cols = torch.arange(self.num_items, device=self.nbr_idx.device).repeat_interleave(self.k)
        idx = torch.stack([self.nbr_idx.flatten(), cols])
        return torch.sparse_coo_tensor(
            idx, self.nbr_sim.flatten(), (self.num_items,) * 2
        ).coalesce()

    def score(self, users: UserBatch) -> Tensor:
        w_t = self.similarity().t().coalesce()  # (I target, I history)
        hist = users.dense(self.num_items)  # (B, I)
        return torch.sparse.mm(w_t, hist.T).T  # (B, I)
