"""Matrix factorization: dot products of learned user and item factors, ``s(u, i) = p_u · q_i``.

Three objectives (``loss``), all on (user, positive item) training pairs:

- ``bpr``: Bayesian Personalized Ranking (Rendle et al., UAI 2009),
  ``-log σ(s(u, i) - s(u, j))`` for sampled items j the user has not interacted with in training,
  averaged over the ``num_negatives`` negatives of each pair;
- ``sampled_softmax``: cross-entropy of the positive against itself plus ``num_negatives``
  uniformly sampled non-positives, ``-log softmax([s(u,i), s(u,j_1..N)] / τ)_0``;
- ``softmax``: cross-entropy over the whole catalogue, ``-log softmax(s(u, ·) / τ)_i`` (no
  sampling; ``num_negatives`` is ignored and no negatives are drawn).

Every loss adds ``reg`` times the squared L2 norm of the factors in the batch (per pair).
Dot-product MF with a well-tuned loss is the baseline Rendle et al. (RecSys 2020, "Neural
Collaborative Filtering vs. Matrix Factorization Revisited") showed NCF does not beat.

``init: xavier`` (RecBole's BPR initialisation: normal with std sqrt(2 / (rows + dim)) per table)
or ``init: normal`` (std ``init_std``).

``sparse: true`` gives the factor tables row-sparse gradients (``nn.Embedding(sparse=True)``): a
step's gradient holds the rows of its batch only, so an optimizer that takes sparse gradients
(``optim=row_adagrad``) touches only those rows, and a step costs the batch, not
the tables (benchmarks/scale.md). With ``optim.fused: true`` (row_adagrad's default) the BPR
backward applies the optimizer's row updates itself (:meth:`MF.use_row_updates`), with no sparse
gradient tensor or optimizer pass in between. Adam's dense update needs ``sparse: false``. With
``compile: true`` (the default) that step's arithmetic on the CPU runs as two compiled loops
(:mod:`recsys.compiling`: a C++ compiler, a few seconds once; eager where compiling fails),
1.3-3x fewer CPU seconds per step than the eager operations (more on larger tables).

Attributes (``features``, :mod:`recsys.models.features`), LightFM-style (Kula, 2015): a user's
and an item's factors are the sum of the id embedding (entities with a training event only) and
the pooled embedding of its attributes, ``p_u = e_u·seen_u + f(attrs_u)``,
``q_i = e_i·seen_i + g(attrs_i)``; a side without attributes keeps its id factors, and
``ids: false`` drops the id part of the sides that have attributes. A cold item or a held-out
user is represented by its attributes alone, and so is a new item or a new customer
(:meth:`MF.new_item_vectors`, :meth:`MF.new_user_vectors`; score with :meth:`MF.score_vectors`).
Training then takes a plain autograd path that pools the attributes of the batch's rows only
(:func:`~recsys.models.features.entity_rows`); ``reg`` weighs the squared norm of those summed
factors. ``sparse: true`` still gives the id tables row-sparse gradients (the attribute tables'
are dense, which row-wise Adagrad also takes); the fused BPR steps (``compile``) are for ids only.
With ``features: null`` nothing of this exists and the fast paths are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.compiling import Compiled
from recsys.data.batches import PairBatch, UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender, lookup, require
from recsys.models.features import AttributeEmbedding, FeatureSettings, entity_rows, entity_table

LOSSES = ("bpr", "softmax", "sampled_softmax")


class _BPR(torch.autograd.Function):
    """The BPR loss ``mean softplus(-(p_u . (q_i - q_j)))`` over (B, N) negatives, with its
    gradient written out: half the element-wise passes of autograd over three lookups, one
    ``index_add_`` per table (the CPU path of ``loss: bpr`` without ``reg``; tested against
    autograd)."""

    @staticmethod
    def forward(ctx, users_w: Tensor, items_w: Tensor, user: Tensor, item: Tensor, neg: Tensor):
        u = users_w.index_select(0, user)  # (B, d)
        diff = items_w.index_select(0, item).unsqueeze(1) - items_w.index_select(
            0, neg.reshape(-1)
        ).view(*neg.shape, -1)  # (B, N, d)
        x = (u.unsqueeze(1) * diff).sum(-1)  # (B, N)
        ctx.save_for_backward(u, diff, x, user, item, neg)
        ctx.rows = (users_w.shape[0], items_w.shape[0])
        return F.softplus(-x).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, diff, x, user, item, neg = ctx.saved_tensors
        c = torch.sigmoid(-x).mul_(-grad / x.numel())  # (B, N): d loss / d x
        g_items = c.unsqueeze(-1) * u.unsqueeze(1)  # (B, N, d): d loss / d q_i (= -d / d q_j)
        g_users = (c.unsqueeze(-1) * diff).sum(1)
        d = u.shape[1]
        gu = u.new_zeros(ctx.rows[0], d).index_add_(0, user, g_users)
        gi = u.new_zeros(ctx.rows[1], d).index_add_(0, item, g_items.sum(1))
        gi.index_add_(0, neg.reshape(-1), g_items.view(-1, d), alpha=-1)
        return gu, gi, None, None, None


def _sparse_rows(rows: Tensor, values: Tensor, shape: torch.Size) -> Tensor:
    """The gradient of a (rows, d) table as a sparse COO tensor holding ``values`` (n, d) at
    ``rows`` (n,), repeated rows not summed (optimizers that take sparse gradients sum them)."""
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=False)


_SIGN = torch.tensor([1.0, -1.0])  # weights of (q_i, q_j) in the embedding_bag: q_i - q_j


def _bpr_scores(users_w: Tensor, items_w: Tensor, user: Tensor, item: Tensor, neg: Tensor):
    """(N, B) ``x = p_u . (q_i - q_j)`` and the mean BPR loss: the compiled step's forward (one
    fused loop over the batch, nothing of (B, d) written)."""
    diff = items_w[item] - items_w[neg.t()]  # (N, B, d)
    x = (diff * users_w[user]).sum(-1)
    return x, F.softplus(-x).mean()


def _rows_from(u: Tensor, diff: Tensor, x: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient's rows from the gathered user rows ``u`` (B, d), the differences ``diff``
    (N, B, d) and the scores ``x`` (N, B): (B, d) for the users, ((1 + N) B, d) for the items
    (positives, then negative k)."""
    c = (torch.sigmoid(-x) * (-grad / x.numel())).unsqueeze(-1)  # (N, B, 1): d loss / d x
    cs = torch.cat([c.sum(0, keepdim=True), -c])  # (1 + N, B, 1): d loss / d score
    return (diff * c).sum(0), (cs * u).reshape(-1, u.shape[1])


def _bpr_rows(
    users_w: Tensor, items_w: Tensor, user: Tensor, item: Tensor, neg: Tensor, x: Tensor, grad
):
    """The gradient's rows, the factors gathered again rather than kept from the forward."""
    return _rows_from(users_w[user], items_w[item] - items_w[neg.t()], x, grad)


def _bpr_norms(users_w: Tensor, items_w: Tensor, user: Tensor, item: Tensor, neg: Tensor):
    """:func:`_bpr_scores` and the squared norms ``|p_u|^2`` (B,) and ``|q_i - q_j|^2`` (N, B),
    computed in the same loop: a backward that applies the optimizer's row updates derives
    each gradient row's mean square from them (:func:`_update_step`)."""
    u = users_w[user]
    diff = items_w[item] - items_w[neg.t()]
    x = (diff * u).sum(-1)
    return x, F.softplus(-x).mean(), u.square().sum(-1), diff.square().sum(-1)


def _bpr_kept(users_w: Tensor, items_w: Tensor, user: Tensor, item: Tensor, neg: Tensor):
    """:func:`_bpr_norms` that also returns the gathered rows ``u`` (B, d) and ``diff``
    (N, B, d), for a backward that writes the tables: compiled code that reads a table it also
    writes keeps a whole copy of it, so the backward reads these instead."""
    u = users_w[user]
    diff = items_w[item] - items_w[neg.t()]
    x = (diff * u).sum(-1)
    return x, F.softplus(-x).mean(), u.square().sum(-1), diff.square().sum(-1), u, diff


_COMPILED_SCORES, _COMPILED_ROWS = Compiled(_bpr_scores), Compiled(_bpr_rows)
_COMPILED_NORMS, _COMPILED_KEPT = Compiled(_bpr_norms), Compiled(_bpr_kept)
_UPDATE_STEPS: dict[tuple, Compiled] = {}


def _update_step(update_users: Any, update_items: Any, kept: bool) -> Compiled:
    """The gradient rows and the optimizer's row updates of both tables (``RowUpdate``s: pure
    tensor operations) compiled as one function, the rows never written out whole.

    ``kept``: from the rows the forward kept, ``u`` (B, d) and ``diff`` (N, B, d); otherwise
    gathered again from the tables (``u``, ``diff`` None), for which the compiled code keeps a
    copy of the user table before writing it: cheaper than the kept rows when the table has no
    more rows than the batch (ml-100k, ML-1M), far dearer at 138K users.

    Where the update takes each row's mean squared gradient (``RowUpdate.fn_sq``), it comes
    from the forward's norms ``nu`` = |p_u|^2, ``nd`` = |q_i - q_j|^2 instead of a pass over
    the rows: an item's gradient row is a multiple of p_u (the positive's by the sum of the
    negatives' coefficients), a user's is ``c * (q_i - q_j)`` with one negative (with more it
    is a sum of differences, whose squares the plain update takes). Both together: 12-15% less
    CPU per step at ml-100k's and ML-1M's shapes (benchmarks/scale.md)."""
    fu, fu_sq, fi, fi_sq = update_users.fn, update_users.fn_sq, update_items.fn, update_items.fn_sq
    key = (fu, fu_sq, fi, fi_sq, kept)
    if key not in _UPDATE_STEPS:

        def bpr_update(
            users_w, items_w, user, item, neg, u, diff, x, nu, nd, grad, s_u, h_u, s_i, h_i
        ):
            if kept:
                g_users, g_items = _rows_from(u, diff, x, grad)
            else:
                g_users, g_items = _bpr_rows(users_w, items_w, user, item, neg, x, grad)
            d = users_w.shape[1]
            c = torch.sigmoid(-x) * (-grad / x.numel())  # (N, B): d loss / d x
            rows = torch.cat([item, neg.t().reshape(-1)])
            if fu_sq is not None and x.shape[0] == 1:
                fu_sq(users_w, *s_u, user, g_users, c[0].square() * nd[0] / d, *h_u)
            else:
                fu(users_w, *s_u, user, g_users, *h_u)
            if fi_sq is not None:
                cs = torch.cat([c.sum(0, keepdim=True), c])  # (1 + N, B), squared below
                fi_sq(items_w, *s_i, rows, g_items, (cs.square() * (nu / d)).reshape(-1), *h_i)
            else:
                fi(items_w, *s_i, rows, g_items, *h_i)

        _UPDATE_STEPS[key] = Compiled(bpr_update)
    return _UPDATE_STEPS[key]


class _SparseBPR(torch.autograd.Function):
    """:class:`_BPR` with row-sparse gradients (``sparse: true`` on the CPU): each gradient is a
    sparse tensor of the batch's rows, so nothing in a step is as large as a table. Eager, the
    differences ``q_i - q_j`` come from one ``embedding_bag`` (gather and subtract fused: half the
    passes of gathering both rows); ``compiled``, the forward and the gradient rows are two
    compiled loops (:mod:`recsys.compiling`). Tested against autograd.

    ``updates`` (the optimizer's ``RowUpdate`` of each table, :meth:`MF.use_row_updates`): the
    backward applies them to the rows instead of returning gradients; compiled, the rows and both
    updates are one compiled function reading the rows the forward kept."""

    @staticmethod
    def forward(
        ctx,
        users_w: Tensor,
        items_w: Tensor,
        user: Tensor,
        item: Tensor,
        neg: Tensor,
        compiled: bool,
        updates: tuple[Any, Any] | None,
    ):
        ctx.shapes, ctx.compiled = (users_w.shape, items_w.shape), compiled
        ctx.updates = updates
        # the backward writes the tables: from rows kept here, or (a user table no larger than
        # the batch) from rows it gathers again (:func:`_update_step`)
        ctx.kept = compiled and updates is not None and users_w.shape[0] > len(user)
        if compiled and updates is not None:
            if ctx.kept:
                x, loss, nu, nd, u, diff = _COMPILED_KEPT(users_w, items_w, user, item, neg)
                ctx.save_for_backward(users_w, items_w, x, nu, nd, user, item, neg, u, diff)
            else:
                x, loss, nu, nd = _COMPILED_NORMS(users_w, items_w, user, item, neg)
                ctx.save_for_backward(users_w, items_w, x, nu, nd, user, item, neg)
            return loss
        if compiled:
            x, loss = _COMPILED_SCORES(users_w, items_w, user, item, neg)
            ctx.save_for_backward(users_w, items_w, x, user, item, neg)
            return loss
        n, b = neg.shape[1], len(user)
        pairs = torch.stack([item.expand(n, b), neg.t()], -1).view(n * b, 2)  # (N B, 2): i, j
        sign = _SIGN.to(users_w.dtype).expand(n * b, 2)
        diff = F.embedding_bag(pairs, items_w, mode="sum", per_sample_weights=sign)  # (N B, d)
        diff = diff.view(n, b, -1)  # (N, B, d): q_i - q_j
        u = users_w.index_select(0, user)  # (B, d)
        x = (diff * u).sum(-1)  # (N, B)
        ctx.save_for_backward(u, diff, x, user, item, neg)
        return F.softplus(-x).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.compiled and ctx.updates is not None:  # the optimizer in backward, one function
            users_w, items_w, x, nu, nd, user, item, neg, *kept = ctx.saved_tensors
            u, diff = kept or (None, None)
            uu, ui = ctx.updates
            step = _update_step(uu, ui, ctx.kept)
            step(
                users_w, items_w, user, item, neg, u, diff, x, nu, nd, grad, *uu.args(), *ui.args()
            )
            return (None,) * 7
        if ctx.compiled:
            users_w, items_w, x, user, item, neg = ctx.saved_tensors
            g_users, g_items = _COMPILED_ROWS(users_w, items_w, user, item, neg, x, grad)
        else:
            u, diff, x, user, item, neg = ctx.saved_tensors
            c = torch.sigmoid(-x).mul_(-grad / x.numel()).unsqueeze(-1)  # (N, B, 1): d loss / dx
            g_users = diff[0] * c[0] if len(c) == 1 else (diff * c).sum(0)  # (B, d)
            cs = torch.cat([c.sum(0, keepdim=True), c.neg_()])  # (1 + N, B, 1): / d score
            g_items = (cs * u).view(-1, u.shape[1])  # ((1 + N) B, d): positives, then negatives
        rows = torch.cat([item, neg.t().reshape(-1)])
        if ctx.updates is not None:  # eager optimizer in backward: both sets of rows, then
            ctx.updates[0](user, g_users)  # the updates; nothing is handed on to ``.grad``
            ctx.updates[1](rows, g_items)
            return (None,) * 7
        return (
            _sparse_rows(user, g_users, ctx.shapes[0]),
            _sparse_rows(rows, g_items, ctx.shapes[1]),
            None,
            None,
            None,
            None,
            None,
        )


class MF(Recommender):
    train_batch = "pairs"
    represents_users = True
    exposes_embeddings = True
    applies_row_updates = True
    uses_features = True
    scores_new_items = True
    scores_new_users = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        loss: str = "bpr",
        num_negatives: int = 1,
        reg: float = 0.0,
        init: str = "normal",
        init_std: float = 0.1,
        temperature: float = 1.0,
        sparse: bool = False,
        compile: bool = True,
        features: dict[str, Any] | None = None,
        feature_schema: dict[str, Any] | None = None,
    ):
        """Hyper-parameters: configs/model/mf.yaml; ``feature_schema``: the dataset's feature
        fields (injected by ``build_model``)."""
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        require(loss in LOSSES, "loss", loss, f"one of: {', '.join(LOSSES)}")
        require(num_negatives >= 1, "num_negatives", num_negatives, "an integer >= 1")
        require(reg >= 0, "reg", reg, ">= 0")
        require(init in ("normal", "xavier"), "init", init, "one of: normal, xavier")
        require(init_std > 0, "init_std", init_std, "> 0")
        require(temperature > 0, "temperature", temperature, "> 0")
        require(isinstance(sparse, bool), "sparse", sparse, "true or false")
        require(isinstance(compile, bool), "compile", compile, "true or false")
        self.compile = compile
        self.loss_name = loss
        # the full softmax uses every item as a negative: the loader need not sample any
        self.num_negatives = 0 if loss == "softmax" else int(num_negatives)
        self.reg = float(reg)
        self.temperature = float(temperature)
        self._row_updates: tuple[Any, Any] | None = None  # see use_row_updates
        self.user_emb = nn.Embedding(num_users, embedding_size, sparse=sparse)
        self.item_emb = nn.Embedding(num_items, embedding_size, sparse=sparse)
        stds = []
        for table in (self.user_emb, self.item_emb):
            n = table.weight.shape[0]
            std = math.sqrt(2.0 / (n + embedding_size)) if init == "xavier" else init_std
            nn.init.normal_(table.weight, std=std)
            stds.append(std)
        # after the id tables: the id-only initialisation draws are unchanged
        self.feats = f = FeatureSettings.parse(features, feature_schema)
        self.user_attrs = (
            AttributeEmbedding(f.user, num_users, embedding_size, f.pool, stds[0])
            if f.user
            else None
        )
        self.item_attrs = (
            AttributeEmbedding(f.item, num_items, embedding_size, f.pool, stds[1])
            if f.item
            else None
        )

    def set_features(self, features: Any) -> None:
        if self.user_attrs is not None:
            self.user_attrs.load(features.user, features.user_seen)
        if self.item_attrs is not None:
            self.item_attrs.load(features.item, features.item_seen)

    def use_row_updates(self, updates: Mapping[Tensor, Any]) -> bool:
        """Run the optimizer's row updates of both factor tables inside the row-sparse BPR
        backward (``sparse: true``, ``loss: bpr`` without ``reg`` or features, on the CPU: the
        path whose gradient rows this model computes itself): both tables' rows come from the
        weights before the step, then each table's update runs; with ``compile``, rows and
        updates are one compiled function. Any other configuration keeps ordinary gradients
        (returns False)."""
        pair = (updates.get(self.user_emb.weight), updates.get(self.item_emb.weight))
        usable = (
            all(u is not None for u in pair)
            and self.user_emb.sparse
            and self.loss_name == "bpr"
            and not self.reg
            and not self.feats.active
            and self.user_emb.weight.device.type == "cpu"
        )
        self._row_updates = pair if usable else None
        return usable

    # -- representations: ids, or ids plus attributes ---------------------------------------
    def _user_rows(self, user: Tensor) -> Tensor:
        """(*user.shape, d) the users' factors (id part and attribute part)."""
        f = self.feats
        # the lookup keeps sparse gradients; a dense table may be pooled whole
        ids = self.user_emb if self.user_emb.sparse else self.user_emb.weight
        return entity_rows(user, ids, self.user_attrs, f.ids, f.id_dropout, self.training)

    def _item_rows(self, item: Tensor) -> Tensor:
        """(*item.shape, d) the items' factors (id part and attribute part)."""
        f = self.feats
        ids = self.item_emb if self.item_emb.sparse else self.item_emb.weight
        return entity_rows(item, ids, self.item_attrs, f.ids, f.id_dropout, self.training)

    def user_table(self) -> Tensor:
        """(U, d) every user's factors."""
        f = self.feats
        w = self.user_emb.weight
        return entity_table(w, self.user_attrs, f.ids, f.id_dropout, self.training)

    def item_table(self) -> Tensor:
        """(I, d) every item's factors."""
        f = self.feats
        w = self.item_emb.weight
        return entity_table(w, self.item_attrs, f.ids, f.id_dropout, self.training)

    def _feature_loss(self, batch: PairBatch) -> dict[str, Tensor]:
        """The objective with attributes: plain autograd over the batch's summed factors."""
        u = self._user_rows(batch.user)  # (B, d)
        neg = None
        if self.loss_name == "softmax":
            pos = self._item_rows(batch.item)  # (B, d), for reg
            logits = u @ self.item_table().T / self.temperature  # (B, I)
            main = F.cross_entropy(logits, batch.item)
        else:
            assert batch.neg is not None, "MF needs sampled negatives (num_negatives >= 1)"
            v = self._item_rows(torch.cat([batch.item[:, None], batch.neg], 1))  # (B, 1 + N, d)
            pos, neg = v[:, 0], v[:, 1:]
            s = (u.unsqueeze(1) * v).sum(-1)  # (B, 1 + N)
            if self.loss_name == "bpr":
                main = -F.logsigmoid(s[:, :1] - s[:, 1:]).mean()
            else:  # sampled softmax: the positive is class 0 among 1 + N candidates
                main = F.cross_entropy(s / self.temperature, torch.zeros_like(batch.item))
        out = {"loss": main, self.loss_name: main}
        if self.reg:
            sq = u.square().sum() + pos.square().sum()
            if neg is not None:
                sq = sq + neg.square().sum() / neg.shape[1]
            out["loss"] = main + self.reg * sq / len(u)
        return out

    def loss(self, batch: PairBatch) -> dict[str, Tensor]:
        if self.feats.active:
            return self._feature_loss(batch)
        if self.loss_name == "bpr" and not self.reg and self.user_emb.weight.device.type == "cpu":
            assert batch.neg is not None, "MF needs sampled negatives (num_negatives >= 1)"
            w = (self.user_emb.weight, self.item_emb.weight)
            if self.user_emb.sparse:
                main = _SparseBPR.apply(
                    *w, batch.user, batch.item, batch.neg, self.compile, self._row_updates
                )
            else:
                main = _BPR.apply(*w, batch.user, batch.item, batch.neg)
            return {"loss": main, "bpr": main}
        u = lookup(self.user_emb, batch.user)  # (B, d)
        pos = lookup(self.item_emb, batch.item)  # (B, d)
        neg = None
        if self.loss_name == "softmax":
            logits = u @ self.item_emb.weight.T / self.temperature  # (B, I)
            main = F.cross_entropy(logits, batch.item)
        else:
            assert batch.neg is not None, "MF needs sampled negatives (num_negatives >= 1)"
            neg = lookup(self.item_emb, batch.neg)  # (B, N, d)
            s_pos = (u * pos).sum(-1, keepdim=True)  # (B, 1)
            # element-wise, not einsum: a batched (1 x d)(d x N) product is ~10x slower on CPU
            s_neg = (u.unsqueeze(1) * neg).sum(-1)  # (B, N)
            if self.loss_name == "bpr":
                main = -F.logsigmoid(s_pos - s_neg).mean()
            else:  # sampled softmax: the positive is class 0 among 1 + N candidates
                logits = torch.cat([s_pos, s_neg], 1) / self.temperature  # (B, 1 + N)
                main = F.cross_entropy(logits, torch.zeros_like(batch.item))
        out = {"loss": main, self.loss_name: main}
        if self.reg:
            sq = u.square().sum() + pos.square().sum()
            if neg is not None:
                sq = sq + neg.square().sum() / neg.shape[1]
            out["loss"] = main + self.reg * sq / len(u)
        return out

    def score(self, users: UserBatch) -> Tensor:
        if self.feats.active:
            return self._user_rows(users.user) @ self.item_table().T  # (B, I)
        return self.user_emb(users.user) @ self.item_emb.weight.T  # (B, I)

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the users' factors (for segmentation and engagement features)."""
        if self.feats.active:
            return self._user_rows(users.user)
        return self.user_emb(users.user)

    def embeddings(self) -> dict[str, Tensor]:
        """The factor tables exported for ANN search: score(u, i) = user[u] · item[i]."""
        if self.feats.active:
            return {"user": self.user_table(), "item": self.item_table()}
        return {"user": self.user_emb.weight, "item": self.item_emb.weight}

    # -- new entities from their attributes (export, serving) -------------------------------
    def item_vectors(self) -> Tensor:
        """(I, d) every catalogue item's factors."""
        return self.item_table()

    def user_vectors(self, user: Tensor) -> Tensor:
        """(B, d) the factors of known users (ids ``user``)."""
        return self._user_rows(user)

    def new_item_vectors(self, attrs: Any) -> Tensor:
        """(m, d) factors of new items from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's item fields, from
        ``FeatureTable.encode_rows``): a catalogue item without training events is scored the
        same way."""
        if self.item_attrs is None:
            raise ConfigError("this MF uses no item features: a new item cannot be scored")
        return self.item_attrs.encode_table(attrs)

    def new_user_vectors(self, attrs: Any) -> Tensor:
        """(m, d) factors of new customers from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's user fields)."""
        if self.user_attrs is None:
            raise ConfigError("this MF uses no user features: a new customer cannot be scored")
        return self.user_attrs.encode_table(attrs)

    def score_vectors(self, users: Tensor, items: Tensor) -> Tensor:
        """(B, m) scores of users' factors ``users`` (B, d) against items' ``items`` (m, d)
        (from :meth:`user_vectors` / :meth:`new_user_vectors` and :meth:`item_vectors` /
        :meth:`new_item_vectors`): the dot product, as :meth:`score`."""
        return users @ items.T
