"""Attribute k-nearest-neighbours: content-based item-item similarity from item attributes only
(the content-based kNN of Lops et al., "Content-based Recommender Systems", 2011, with TF-IDF
weighted attribute vectors), a cold-start baseline.

Closed form, no training loop. Each item is a vector over the values of the categorical item
fields it uses (``model.features.item``; numeric fields are not used): 1 for every value it
holds, weighted by the value's inverse document frequency over the items that hold any value,
``idf(v) = ln((1 + N) / (1 + df(v))) + 1`` (scikit-learn's smoothed form; ``N`` items with a
value, ``df(v)`` of them holding ``v``), then scaled to unit length. ``fit`` keeps, for every
target item ``i``, the ``k_neighbors`` other items of highest cosine similarity, and

    score(u, i) = Σ_{j ∈ history(u) ∩ N_k(i)} sim(i, j).

The similarity never looks at interactions, so an item without any training event (a cold item)
is scored exactly like a warm item with the same attributes. Similarities are computed in
blocks of target items (memory O(block × I + I × k), never I × I); the training matrix passed
to ``fit`` is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender, require
from recsys.models.pop_category import item_features_of


class AttributeKNN(Recommender):
    train_batch = None
    scores_history = True  # sums over the history's neighbours
    uses_features = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_schema: Mapping[str, Any] | None = None,
        features: Mapping[str, Any] | None = None,
        k_neighbors: int = 100,
        block: int = 1024,
    ):
        super().__init__(num_users, num_items)
        require(k_neighbors >= 1, "k_neighbors", k_neighbors, "an integer >= 1")
        require(block >= 1, "block", block, "an integer >= 1")
        self.feats = item_features_of("AttributeKNN", features, feature_schema)
        self.fields = [f for f in self.feats.item if f["kind"] == "categorical"]
        if not self.fields:
            raise ConfigError("model.features.item: AttributeKNN needs a categorical item field")
        self.k = min(int(k_neighbors), max(1, num_items - 1))
        self.block = int(block)
        sizes = [len(f.get("vocab", ())) for f in self.fields]
        self.offsets = [int(x) for x in np.cumsum([0, *sizes])]  # column of field f's value 1
        for k, f in enumerate(self.fields):  # inputs of fit only: not saved with the weights
            shape = (num_items, max(int(f.get("width", 1)), 1))
            self.register_buffer(
                f"codes{k}", torch.zeros(shape, dtype=torch.long), persistent=False
            )
        # row i: the neighbours of target item i and their similarities
        self.register_buffer("nbr_idx", torch.zeros(num_items, self.k, dtype=torch.long))
        self.register_buffer("nbr_sim", torch.zeros(num_items, self.k))

    def set_features(self, features: Any) -> None:
        """The codes of the used fields of every item (``features.item``, a SplitFeatures)."""
        for k, f in enumerate(self.fields):
            codes = torch.as_tensor(np.asarray(features.item.codes[f["name"]]), dtype=torch.long)
            if codes.shape[0] != self.num_items:
                raise ConfigError(
                    f"item features: {codes.shape[0]} rows for {self.num_items} items"
                )
            if codes.numel() and int(codes.max()) > self.offsets[k + 1] - self.offsets[k]:
                raise ConfigError(f"item feature {f['name']!r}: codes beyond its vocabulary")
            setattr(self, f"codes{k}", codes.to(self.nbr_idx.device))

    def attribute_matrix(self) -> Tensor:
        """(I, D) sparse unit-length TF-IDF rows over the ``D`` values of the used fields."""
        rows, cols = [], []
        for k in range(len(self.fields)):
            codes = getattr(self, f"codes{k}")  # (I, w)
            has = codes > 0
            r = torch.arange(self.num_items, device=codes.device)[:, None].expand_as(codes)
            rows.append(r[has])
            cols.append(codes[has] - 1 + self.offsets[k])
        row, col = torch.cat(rows), torch.cat(cols)
        dim = max(self.offsets[-1], 1)
        n = len(torch.unique(row))  # items holding any value
        df = torch.bincount(col, minlength=dim).float()
        idf = torch.log((1.0 + n) / (1.0 + df)) + 1.0  # (D,)
        vals = idf[col]
        norm = torch.zeros(self.num_items, device=vals.device).index_add_(0, row, vals * vals)
        vals = vals / norm.sqrt()[row]
        x = torch.sparse_coo_tensor(
            torch.stack([row, col]), vals, (self.num_items, dim), check_invariants=False
        )
        return x.coalesce()

    def fit(self, train: Tensor) -> None:
        """Item-item similarities from the attributes (``train`` is not used)."""
        x = self.attribute_matrix()  # (I, D)
        dev = self.nbr_idx.device
        for start in range(0, self.num_items, self.block):
            stop = min(start + self.block, self.num_items)
            idx = torch.arange(start, stop, device=x.device)
            xb = x.index_select(0, idx).to_dense()  # (b, D)
            sim = torch.sparse.mm(x, xb.T).T  # (b, I)
            sim[torch.arange(stop - start), idx] = 0.0  # no self-similarity
            top = torch.topk(sim, self.k, dim=1)
            self.nbr_idx[start:stop] = top.indices.to(dev)
            self.nbr_sim[start:stop] = top.values.to(dev)

    def similarity(self) -> Tensor:
        """(I, I) sparse ``W`` with ``W[i, j] = sim(i, j)`` for ``j`` among ``i``'s neighbours."""
        rows = torch.arange(self.num_items, device=self.nbr_idx.device).repeat_interleave(self.k)
        idx = torch.stack([rows, self.nbr_idx.flatten()])
        return torch.sparse_coo_tensor(
            idx, self.nbr_sim.flatten(), (self.num_items,) * 2, check_invariants=False
        ).coalesce()

    def score(self, users: UserBatch) -> Tensor:
        hist = users.dense(self.num_items).to(self.nbr_sim.device)  # (B, I)
        return torch.sparse.mm(self.similarity(), hist.T).T  # (B, I)
