"""Popularity within category: a cold-start baseline that ranks items by the user's taste for
their categories and by how popular those categories are.

Closed form, no training loop. One categorical item field is the category (``field``; Amazon's
S3-Rec ``attribute``, a MovieLens genre; an item may hold several values). With ``M`` the
(I, C) membership matrix of items and categories, ``M̃`` its rows divided by their sums (an item
splits its weight over its categories) and ``n_i`` item ``i``'s training events:

- global category share ``g_c = Σ_i n_i M̃_ic / Σ_c Σ_i n_i M̃_ic``;
- category popularity ``pop(c) = (Σ_i n_i M_ic) / (Σ_i M_ic)``, the mean training events of an
  item of ``c``, normalised to a maximum of 1 over the categories;
- a user's history share in ``c``, smoothed toward the global share by ``smoothing``
  pseudo-events: ``p(c | u) = (h_uc + smoothing · g_c) / (h_u + smoothing)`` with
  ``h_uc = Σ_{j ∈ history(u)} M̃_jc`` and ``h_u = Σ_c h_uc`` (an empty history gets ``g``);

    score(u, i) = Σ_{c ∈ categories(i)} p(c | u) · pop(c) + item_weight · ñ_i / max_j ñ_j,

where ``ñ_i = n_i`` for an item with training events and, for an item without any (a cold item),
the mean over its categories of the mean training events of their warm items: the popularity a
new product of those categories can expect, so a cold item is not ranked below every warm item of
its categories by construction. Items without a known category get the popularity term only.
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
from recsys.models.features import FeatureSettings


def item_features_of(name: str, features: Mapping[str, Any] | None, schema: Any) -> FeatureSettings:
    """``model.features`` of a model that ranks by item attributes: item fields required, user
    fields refused, each with one :class:`ConfigError` line."""
    if features is None:
        raise ConfigError(
            f"model.features: {name} ranks items by their attributes; set model.features.item "
            "(all or a list of fields)"
        )
    if not (schema or {}).get("item"):
        raise ConfigError(
            f"{name} needs item features, but the dataset has no item features (data.item_features)"
        )
    feats = FeatureSettings.parse(features, schema)
    if feats.user:
        raise ConfigError(f"model.features.user: {name} uses item attributes only")
    if not feats.item:
        raise ConfigError(f"model.features.item: {name} needs item fields (all or a list)")
    return feats


def membership(codes: Tensor, size: int, normalise: bool) -> Tensor:
    """(I, size) sparse matrix of 1-based ``codes`` (I, w) (0: none): 1 per (item, value), or
    ``1 / (values of the item)`` with ``normalise``."""
    n, w = codes.shape
    has = codes > 0
    rows = torch.arange(n, device=codes.device)[:, None].expand(n, w)[has]
    cols = codes[has]
    vals = torch.ones(len(cols), device=codes.device)
    if normalise:
        vals = vals / has.sum(1)[rows].float()
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals, (n, size), check_invariants=False
    ).coalesce()


class PopularityInCategory(Recommender):
    train_batch = None
    scores_history = True  # the history's category shares decide the scores
    uses_features = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_schema: Mapping[str, Any] | None = None,
        features: Mapping[str, Any] | None = None,
        field: str | None = None,
        smoothing: float = 10.0,
        item_weight: float = 0.1,
    ):
        super().__init__(num_users, num_items)
        require(smoothing >= 0, "smoothing", smoothing, ">= 0")
        require(item_weight >= 0, "item_weight", item_weight, ">= 0")
        self.feats = item_features_of("PopularityInCategory", features, feature_schema)
        cats = [f for f in self.feats.item if f["kind"] == "categorical"]
        names = [str(f["name"]) for f in cats]
        if not cats:
            raise ConfigError(
                "model.features.item: PopularityInCategory needs a categorical item field"
            )
        if field is not None and field not in names:
            raise ConfigError(
                f"model.field: {field!r} is not a categorical item field of model.features.item "
                f"(fields: {', '.join(names)})"
            )
        spec = cats[names.index(field)] if field is not None else cats[0]
        self.field = str(spec["name"])
        self.smoothing = float(smoothing)
        self.item_weight = float(item_weight)
        size = len(spec.get("vocab", ())) + 1  # code 0: no value
        self.register_buffer(
            "codes", torch.zeros(num_items, max(int(spec.get("width", 1)), 1), dtype=torch.long)
        )
        self.register_buffer("cat_pop", torch.zeros(size))  # pop(c), max 1; [0] = 0
        self.register_buffer("cat_share", torch.zeros(size))  # g_c; [0] = 0
        self.register_buffer("item_pop", torch.zeros(num_items))  # n_i / max n

    def set_features(self, features: Any) -> None:
        """The category codes of every item (``features.item``, a :class:`SplitFeatures`)."""
        codes = torch.as_tensor(np.asarray(features.item.codes[self.field]), dtype=torch.long)
        if codes.shape[0] != self.num_items:
            raise ConfigError(f"item features: {codes.shape[0]} rows for {self.num_items} items")
        if codes.numel() and int(codes.max()) >= len(self.cat_pop):
            raise ConfigError(f"item feature {self.field!r}: codes beyond its vocabulary")
        self.codes = codes.to(self.codes.device)

    def fit(self, train: Tensor) -> None:
        """``train``: (num_users, num_items) sparse tensor of training events."""
        dev = self.codes.device
        n = torch.sparse.sum(train.coalesce(), dim=0).to_dense().float().to(dev)  # (I,)
        size = len(self.cat_pop)
        m = membership(self.codes, size, normalise=False)  # (I, C + 1)
        m_norm = membership(self.codes, size, normalise=True)
        events = torch.sparse.mm(m.t(), n[:, None]).squeeze(1)  # (C + 1,)
        items = torch.sparse.mm(m.t(), torch.ones(self.num_items, 1, device=dev)).squeeze(1)
        pop = torch.where(items > 0, events / items.clamp_min(1), torch.zeros_like(events))
        share = torch.sparse.mm(m_norm.t(), n[:, None]).squeeze(1)
        self.cat_pop.copy_(pop / pop.max() if pop.max() > 0 else pop)
        self.cat_share.copy_(share / share.sum() if share.sum() > 0 else share)
        # a cold item's expected popularity: its categories' mean events per warm item
        warm = (n > 0).float()
        warm_items = torch.sparse.mm(m.t(), warm[:, None]).squeeze(1)  # (C + 1,)
        per_warm = torch.where(warm_items > 0, events / warm_items.clamp_min(1), 0.0)
        per_warm[0] = 0.0  # code 0 is no category
        n_cats = (self.codes > 0).sum(1).float()  # (I,)
        fill = torch.sparse.mm(m, per_warm[:, None]).squeeze(1) / n_cats.clamp_min(1)
        expected = torch.where(n > 0, n, fill)
        self.item_pop.copy_(expected / expected.max() if expected.max() > 0 else expected)

    def category_shares(self, users: UserBatch) -> Tensor:
        """(B, C + 1) ``p(c | u)`` of each user's history (column 0, no category: 0)."""
        size = len(self.cat_pop)
        hist = users.dense(self.num_items).to(self.cat_share.device)  # (B, I)
        m_norm = membership(self.codes, size, normalise=True)  # (I, C + 1)
        h = torch.sparse.mm(m_norm.t(), hist.T).T  # (B, C + 1)
        total = h.sum(1, keepdim=True)  # (B, 1)
        denom = total + self.smoothing
        smoothed = (h + self.smoothing * self.cat_share) / denom.clamp_min(1e-12)
        return torch.where(denom > 0, smoothed, self.cat_share.expand_as(h))

    def score(self, users: UserBatch) -> Tensor:
        q = self.category_shares(users) * self.cat_pop  # (B, C + 1)
        m = membership(self.codes, len(self.cat_pop), normalise=False)  # (I, C + 1)
        by_category = torch.sparse.mm(m, q.T).T  # (B, I)
        return by_category + self.item_weight * self.item_pop
