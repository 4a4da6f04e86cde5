"""Neural Collaborative Filtering (He et al., WWW 2017): GMF, MLP and NeuMF.

All three score a (user, item) pair with a final linear layer ``h`` on a pair representation:

- ``GMF``:   ``φ = p_u ⊙ q_i``;
- ``MLP``:   ``φ = tower([p_u, q_i])``, a ReLU tower with sizes ``mlp_hidden_size`` (the input is
  the concatenation of the two ``embedding_size`` embeddings);
- ``NeuMF``: ``φ = [p_u^G ⊙ q_i^G, tower([p_u^M, q_i^M])]``, separate embeddings per branch.

Training is pointwise: binary cross-entropy (logits) with label 1 for each training pair and 0
for each of its ``num_negatives`` sampled negatives, averaged over all ``B (1 + N)`` pairs — the
paper's log loss (it samples 4 negatives; RecBole's default protocol samples 1).

Full-ranking ``score`` is batched over all items: GMF is one matmul ``(p_u ⊙ h) Qᵀ``; for the
tower, the first layer is split as ``W [p; q] = W_u p + W_i q``, so the user and item halves are
computed once each and only their (B, I, h_1) sum passes through the rest of the tower, in chunks
of users bounded by ``score_chunk`` pairs.

NeuMF can start from trained GMF and MLP checkpoints (``pretrained_gmf`` / ``pretrained_mlp``,
paths to recsys checkpoints of those models with matching sizes), as in the paper: embeddings and
tower are copied and the output layer is ``[α h_GMF, (1 - α) h_MLP]``. The paper then fine-tunes
with plain SGD; here the configured optimizer is used. Deviation from the paper: dropout
(``dropout``, RecBole's default 0.1) before each tower layer.

Attributes (``features``, :mod:`recsys.models.features`), LightFM-style: a user's and an item's
embeddings are the sum of the id embedding (entities with a training event only) and the pooled
embedding of its attributes (for NeuMF one attribute embedding of size
``mf_embedding_size + mlp_embedding_size``, split between the branches); a side without
attributes keeps its id embeddings, ``ids: false`` drops the id part of the sides that have
attributes. A cold item or a held-out user is represented by its attributes alone, and so is a
new item or a new customer: :meth:`~_PairwiseScorer.new_item_vectors`,
:meth:`~_PairwiseScorer.new_user_vectors`, scored with :meth:`~_PairwiseScorer.score_vectors`.
With ``features: null`` nothing of this exists and the computation is the id-only one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import PairBatch, UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender, lookup, require
from recsys.models.features import AttributeEmbedding, FeatureSettings, entity_rows, entity_table


def _check_common(num_negatives: int, dropout: float, init_std: float) -> None:
    require(num_negatives >= 1, "num_negatives", num_negatives, "an integer >= 1")
    require(0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
    require(init_std > 0, "init_std", init_std, "> 0")


def _embeddings(n: int, d: int, std: float) -> nn.Embedding:
    e = nn.Embedding(n, d)
    nn.init.normal_(e.weight, std=std)
    return e


class Tower(nn.Module):
    """ReLU MLP over ``[p_u, q_i]`` whose first layer is split into user and item halves."""

    def __init__(self, embedding_size: int, hidden: list[int], dropout: float):
        super().__init__()
        require(
            isinstance(hidden, list | tuple)
            and len(hidden) >= 1
            and all(int(h) >= 1 for h in hidden),
            "mlp_hidden_size",
            hidden,
            "a non-empty list of positive integers",
        )
        sizes = [2 * embedding_size, *[int(h) for h in hidden]]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.d = embedding_size
        self.out_size = sizes[-1]

    def forward(self, u: Tensor, i: Tensor) -> Tensor:
        """``u``, ``i``: (..., d) embeddings of paired users and items → (..., h_last)."""
        x = torch.cat([u, i], -1)
        for layer in self.layers:
            x = F.relu(layer(self.dropout(x)))
        return x

    def all_items(self, u: Tensor, items: Tensor) -> Tensor:
        """``u`` (B, d), ``items`` (I, d) → (B, I, h_last) for every (user, item) pair."""
        first = self.layers[0]
        w_u, w_i = first.weight[:, : self.d], first.weight[:, self.d :]
        x = F.relu((u @ w_u.T)[:, None, :] + (items @ w_i.T + first.bias)[None, :, :])  # (B, I, h1)
        for layer in self.layers[1:]:
            x = F.relu(layer(x))
        return x


def _bce(pos_logit: Tensor, neg_logit: Tensor) -> Tensor:
    """Mean log loss over positives (label 1, shape (B,)) and negatives (label 0, (B, N))."""
    logits = torch.cat([pos_logit[:, None], neg_logit], 1)  # (B, 1 + N)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


class _PairwiseScorer(Recommender):
    """Shared loss/score plumbing. A subclass lists its embedding tables per branch
    (:meth:`user_tables`, :meth:`item_tables`, paired by position) and scores from the branches'
    embeddings: :meth:`pair_logits_of` for paired rows, :meth:`all_logits_of` for every (user,
    item) of two tables."""

    train_batch = "pairs"
    represents_users = True
    predicts_pairs = True
    uses_features = True
    scores_new_items = True
    scores_new_users = True
    # max (user, item) pairs per tower pass in ``score``: 2^16 keeps the (users, items, h)
    # activations near cache size, 2.3x faster than 2^18 on ml-100k (1.9 -> 0.8 CPU s per pass)
    score_chunk = 1 << 16

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        """The user embedding tables, one per branch (NeuMF: GMF's, then MLP's)."""
        raise NotImplementedError

    def item_tables(self) -> tuple[nn.Embedding, ...]:
        """The item embedding tables, paired with :meth:`user_tables`."""
        raise NotImplementedError

    def pair_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        """(...,) logits of paired users and items from their per-branch (..., d_k) embeddings."""
        raise NotImplementedError

    def all_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        """(B, I) logits of every pair of per-branch user (B, d_k) and item (I, d_k) embeddings."""
        raise NotImplementedError

    def _init_features(
        self, features: dict[str, Any] | None, schema: dict[str, Any] | None, init_std: float
    ) -> None:
        """The attribute embeddings (after every id-only module: its initialisation draws are
        unchanged), one per side of the width of all branches together."""
        self.feats = f = FeatureSettings.parse(features, schema)
        d = sum(t.embedding_dim for t in self.user_tables())
        self.user_attrs = (
            AttributeEmbedding(f.user, self.num_users, d, f.pool, init_std) if f.user else None
        )
        self.item_attrs = (
            AttributeEmbedding(f.item, self.num_items, d, f.pool, init_std) if f.item else None
        )

    def set_features(self, features: Any) -> None:
        if self.user_attrs is not None:
            self.user_attrs.load(features.user, features.user_seen)
        if self.item_attrs is not None:
            self.item_attrs.load(features.item, features.item_seen)

    def _rows(
        self, idx: Tensor, tables: tuple[nn.Embedding, ...], attrs: AttributeEmbedding | None
    ) -> list[Tensor]:
        """Per-branch (*idx.shape, d_k) embeddings of the entities ``idx``."""
        if attrs is None:
            return [lookup(t, idx) for t in tables]
        f = self.feats
        rows = entity_rows(
            idx,
            tables[0].weight
            if len(tables) == 1
            else lambda i: torch.cat([lookup(t, i) for t in tables], -1),
            attrs,
            f.ids,
            f.id_dropout,
            self.training,
        )
        return list(rows.split([t.embedding_dim for t in tables], -1))

    def _users(self, user: Tensor) -> list[Tensor]:
        """Per-branch (B, d_k) embeddings of the users ``user`` (for scoring)."""
        if self.user_attrs is None:
            return [t(user) for t in self.user_tables()]
        return self._rows(user, self.user_tables(), self.user_attrs)

    def _items(self) -> list[Tensor]:
        """Per-branch (I, d_k) embeddings of every item."""
        tables = self.item_tables()
        if self.item_attrs is None:
            return [t.weight for t in tables]
        f = self.feats
        w = torch.cat([t.weight for t in tables], -1)
        full = entity_table(w, self.item_attrs, f.ids, f.id_dropout, self.training)
        return list(full.split([t.embedding_dim for t in tables], -1))

    def _split(self, x: Tensor) -> list[Tensor]:
        return list(x.split([t.embedding_dim for t in self.user_tables()], -1))

    def pair_logits(self, user: Tensor, item: Tensor) -> Tensor:
        """(...,) logits of paired users and items (ids of the same shape)."""
        u = self._rows(user, self.user_tables(), self.user_attrs)
        return self.pair_logits_of(u, self._rows(item, self.item_tables(), self.item_attrs))

    def user_logits(self, user: Tensor) -> Tensor:
        """(B, I) logits of every item for the users ``user``."""
        return self.all_logits_of(self._users(user), self._items())

    def loss(self, batch: PairBatch) -> dict[str, Tensor]:
        assert batch.neg is not None, "NCF models need sampled negatives (num_negatives >= 1)"
        pos = self.pair_logits(batch.user, batch.item)  # (B,)
        n = batch.neg.shape[1]
        neg = self.pair_logits(batch.user[:, None].expand(-1, n), batch.neg)  # (B, N)
        bce = _bce(pos, neg)
        return {"loss": bce, "bce": bce}

    def predict(self, user: Tensor, item: Tensor) -> Tensor:
        """(n,) interaction probabilities of paired users and items."""
        return torch.sigmoid(self.pair_logits(user, item))

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the users' embeddings (NeuMF: its GMF and MLP embeddings side by side)."""
        return torch.cat(self._users(users.user), -1)

    def score(self, users: UserBatch) -> Tensor:
        step = max(1, self.score_chunk // self.num_items)
        items = self._items()  # once for every chunk
        if len(users.user) <= step:
            return self.all_logits_of(self._users(users.user), items)
        # chunks written into one preallocated (B, I): kept per-chunk results would sit between
        # the freed (users, items, h) activations and fragment the heap (on Amazon Beauty a
        # list + torch.cat of 205 chunks held 3.6 GB for 50 MB of scores)
        w = next(self.parameters())
        out = w.new_empty(len(users.user), self.num_items)
        for s in range(0, len(users.user), step):
            out[s : s + step] = self.all_logits_of(self._users(users.user[s : s + step]), items)
        return out  # (B, I)

    # -- new entities from their attributes (export, serving) -------------------------------
    def item_vectors(self) -> Tensor:
        """(I, D) every catalogue item's embeddings, the branches side by side (D: their sum)."""
        return torch.cat(self._items(), -1)

    def user_vectors(self, user: Tensor) -> Tensor:
        """(B, D) the embeddings of known users (ids ``user``), the branches side by side."""
        return torch.cat(self._users(user), -1)

    def new_item_vectors(self, attrs: Any) -> Tensor:
        """(m, D) embeddings of new items from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's item fields, from
        ``FeatureTable.encode_rows``): a catalogue item without training events is scored the
        same way."""
        if self.item_attrs is None:
            raise ConfigError(
                f"this {type(self).__name__} uses no item features: a new item cannot be scored"
            )
        return self.item_attrs.encode_table(attrs)

    def new_user_vectors(self, attrs: Any) -> Tensor:
        """(m, D) embeddings of new customers from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's user fields)."""
        if self.user_attrs is None:
            raise ConfigError(
                f"this {type(self).__name__} uses no user features: a new customer cannot be scored"
            )
        return self.user_attrs.encode_table(attrs)

    def score_vectors(self, users: Tensor, items: Tensor) -> Tensor:
        """(B, m) logits of users' embeddings ``users`` (B, D) against items' ``items`` (m, D)
        (from :meth:`user_vectors` / :meth:`new_user_vectors` and :meth:`item_vectors` /
        :meth:`new_item_vectors`), as :meth:`score`."""
        return self.all_logits_of(self._split(users), self._split(items))


class GMF(_PairwiseScorer):
    """Generalized matrix factorization: ``h · (p_u ⊙ q_i)``."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        num_negatives: int = 1,
        init_std: float = 0.01,
        features: dict[str, Any] | None = None,
        feature_schema: dict[str, Any] | None = None,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        _check_common(num_negatives, 0.0, init_std)
        self.num_negatives = int(num_negatives)
        self.user_emb = _embeddings(num_users, embedding_size, init_std)
        self.item_emb = _embeddings(num_items, embedding_size, init_std)
        self.out = nn.Linear(embedding_size, 1)
        self._init_features(features, feature_schema, init_std)

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.user_emb,)

    def item_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.item_emb,)

    def pair_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        return self.out(u[0] * i[0]).squeeze(-1)

    def all_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        w = self.out.weight[0]  # (d,)
        return (u[0] * w) @ i[0].T + self.out.bias  # (B, I)


class MLP(_PairwiseScorer):
    """The MLP branch alone: ``h · tower([p_u, q_i])``."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        mlp_hidden_size: list[int] | None = None,
        dropout: float = 0.1,
        num_negatives: int = 1,
        init_std: float = 0.01,
        features: dict[str, Any] | None = None,
        feature_schema: dict[str, Any] | None = None,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        _check_common(num_negatives, dropout, init_std)
        self.num_negatives = int(num_negatives)
        self.user_emb = _embeddings(num_users, embedding_size, init_std)
        self.item_emb = _embeddings(num_items, embedding_size, init_std)
        self.tower = Tower(embedding_size, list(mlp_hidden_size or [128, 64]), dropout)
        self.out = nn.Linear(self.tower.out_size, 1)
        self._init_features(features, feature_schema, init_std)

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.user_emb,)

    def item_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.item_emb,)

    def pair_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        return self.out(self.tower(u[0], i[0])).squeeze(-1)

    def all_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        x = self.tower.all_items(u[0], i[0])  # (B, I, h)
        return self.out(x).squeeze(-1)


def _load_model_state(path: str, key: str) -> dict[str, Tensor]:
    """The model weights (``model.*`` entries) of a recsys checkpoint."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.{key}: no such checkpoint file: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
    except Exception as e:  # not a checkpoint / not a recsys checkpoint
        raise ConfigError(f"model.{key}: {p} is not a readable recsys checkpoint ({e})") from None
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def _copy(dst: Tensor, src: Tensor, key: str, name: str) -> None:
    if dst.shape != src.shape:
        raise ConfigError(
            f"model.{key}: {name} has shape {tuple(src.shape)} in the checkpoint but "
            f"{tuple(dst.shape)} here (same data and sizes are required)"
        )
    with torch.no_grad():
        dst.copy_(src)


class NeuMF(_PairwiseScorer):
    """Fusion of GMF and MLP: ``h · [p^G_u ⊙ q^G_i, tower([p^M_u, q^M_i])]``."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        mf_embedding_size: int = 64,
        mlp_embedding_size: int = 64,
        mlp_hidden_size: list[int] | None = None,
        dropout: float = 0.1,
        num_negatives: int = 1,
        init_std: float = 0.01,
        pretrained_gmf: str | None = None,
        pretrained_mlp: str | None = None,
        alpha: float = 0.5,
        features: dict[str, Any] | None = None,
        feature_schema: dict[str, Any] | None = None,
    ):
        super().__init__(num_users, num_items)
        require(mf_embedding_size >= 1, "mf_embedding_size", mf_embedding_size, "an integer >= 1")
        require(
            mlp_embedding_size >= 1, "mlp_embedding_size", mlp_embedding_size, "an integer >= 1"
        )
        require(0 <= alpha <= 1, "alpha", alpha, "in [0, 1]")
        require(
            (pretrained_gmf is None) == (pretrained_mlp is None),
            "pretrained_gmf",
            pretrained_gmf,
            "set together with model.pretrained_mlp (both or neither)",
        )
        _check_common(num_negatives, dropout, init_std)
        self.num_negatives = int(num_negatives)
        self.user_mf = _embeddings(num_users, mf_embedding_size, init_std)
        self.item_mf = _embeddings(num_items, mf_embedding_size, init_std)
        self.user_mlp = _embeddings(num_users, mlp_embedding_size, init_std)
        self.item_mlp = _embeddings(num_items, mlp_embedding_size, init_std)
        self.tower = Tower(mlp_embedding_size, list(mlp_hidden_size or [128, 64]), dropout)
        self.out = nn.Linear(mf_embedding_size + self.tower.out_size, 1)
        self._init_features(features, feature_schema, init_std)
        if pretrained_gmf is not None and pretrained_mlp is not None:
            self._load_pretrained(pretrained_gmf, pretrained_mlp, float(alpha))

    def _load_pretrained(self, gmf_path: str, mlp_path: str, alpha: float) -> None:
        gmf = _load_model_state(gmf_path, "pretrained_gmf")
        mlp = _load_model_state(mlp_path, "pretrained_mlp")
        for ours, theirs, state, key in (
            (self.user_mf.weight, "user_emb.weight", gmf, "pretrained_gmf"),
            (self.item_mf.weight, "item_emb.weight", gmf, "pretrained_gmf"),
            (self.user_mlp.weight, "user_emb.weight", mlp, "pretrained_mlp"),
            (self.item_mlp.weight, "item_emb.weight", mlp, "pretrained_mlp"),
        ):
            if theirs not in state:
                raise ConfigError(
                    f"model.{key}: the checkpoint has no {theirs} (is it a GMF/MLP run?)"
                )
            _copy(ours, state[theirs], key, theirs)
        for k, param in self.tower.named_parameters():
            if f"tower.{k}" not in mlp:
                raise ConfigError(
                    f"model.pretrained_mlp: the checkpoint has no tower.{k} (is it an MLP run?)"
                )
            _copy(param, mlp[f"tower.{k}"], "pretrained_mlp", f"tower.{k}")
        d_mf = self.user_mf.weight.shape[1]
        _copy(self.out.weight[:, :d_mf], alpha * gmf["out.weight"], "pretrained_gmf", "out.weight")
        _copy(
            self.out.weight[:, d_mf:],
            (1 - alpha) * mlp["out.weight"],
            "pretrained_mlp",
            "out.weight",
        )
        _copy(
            self.out.bias,
            alpha * gmf["out.bias"] + (1 - alpha) * mlp["out.bias"],
            "pretrained_gmf",
            "out.bias",
        )

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.user_mf, self.user_mlp)

    def item_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.item_mf, self.item_mlp)

    def pair_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        gmf = u[0] * i[0]
        mlp = self.tower(u[1], i[1])
        return self.out(torch.cat([gmf, mlp], -1)).squeeze(-1)

    def all_logits_of(self, u: list[Tensor], i: list[Tensor]) -> Tensor:
        d_mf = self.user_mf.weight.shape[1]
        w_mf, w_mlp = self.out.weight[0, :d_mf], self.out.weight[0, d_mf:]
        gmf = (u[0] * w_mf) @ i[0].T  # (B, I)
        x = self.tower.all_items(u[1], i[1])  # (B, I, h)
        return gmf + x @ w_mlp + self.out.bias
