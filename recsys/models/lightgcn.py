"""LightGCN: light graph convolution for collaborative filtering (He et al., SIGIR 2020).

Ego embeddings ``E⁰`` of users and items are propagated over the symmetric-normalised
user–item graph, ``E^{k+1} = D^{-1/2} A D^{-1/2} E^k`` with A the bipartite adjacency of the
training events (repeats counted once), for ``num_layers`` = K layers, and combined by the layer
mean ``E = (E⁰ + … + E^K) / (K + 1)``; ``s(u, i) = e_u · e_i``. Training: BPR on (user, positive,
sampled negative) with the final embeddings, plus ``reg`` times the squared L2 norm of the batch's
ego embeddings over two and the batch size (the paper's code: ``decay · (‖e⁰_u‖² + ‖e⁰_i‖² +
‖e⁰_j‖²) / 2 / B``; with N negatives per pair, their mean).

The graph is bipartite, so a layer is two sparse products with the normalised (U, I) matrix
``R̃ = D_U^{-1/2} R D_I^{-1/2}``: ``E_U^{k+1} = R̃ E_I^k`` and ``E_I^{k+1} = R̃ᵀ E_U^k``, CSR on
both sides (forward and backward use the same two matrices; no (U + I)² matrix, dense or
sparse). The model receives the training matrix through ``set_train_matrix`` (RecModule calls it
when fitting starts; ``needs_train_matrix``) and keeps its edges as buffers, so a checkpoint or
an artifact scores without the data. Before that the graph has no edges (every layer above 0 is
zero): a freshly built model scores ``E⁰ / (K + 1)``.

Full-ranking evaluation propagates once per pass: switching to eval mode propagates and caches
the final embeddings (buffers, not saved), keyed by the version counters of the two tables (an
optimizer step or a loaded state bumps them) and of the graph; training mode always propagates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import PairBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.ials import csr_matrix


class _Propagate(torch.autograd.Function):
    """One layer over the bipartite graph: ``(R̃ e_items, R̃ᵀ e_users)``; the backward is the
    same two products with the roles swapped."""

    @staticmethod
    def forward(ctx, r: Tensor, rt: Tensor, users: Tensor, items: Tensor):
        ctx.r, ctx.rt = r, rt
        return r @ items, rt @ users

    @staticmethod
    def backward(ctx, grad_users: Tensor | None, grad_items: Tensor | None):
        # out_u = R̃ e_i, out_i = R̃ᵀ e_u  =>  d e_u = R̃ g_i, d e_i = R̃ᵀ g_u
        gu = ctx.r @ grad_items if grad_items is not None else None
        gi = ctx.rt @ grad_users if grad_users is not None else None
        return None, None, gu, gi


def normalised(user: Tensor, item: Tensor, num_users: int, num_items: int, dtype: torch.dtype):
    """``(R̃, R̃ᵀ)`` as CSR matrices: the edges weighted by ``1 / sqrt(deg(u) deg(i))``."""
    du = torch.bincount(user, minlength=num_users).to(dtype)
    di = torch.bincount(item, minlength=num_items).to(dtype)
    w = (du[user] * di[item]).rsqrt()

    def csr(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Tensor:
        order = torch.argsort(rows * n_cols + cols)
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
        return csr_matrix(crow, cols[order], w[order], (n_rows, n_cols))

    return csr(user, item, num_users, num_items), csr(item, user, num_items, num_users)


class LightGCN(Recommender):
    train_batch = "pairs"
    no_features = "propagation over the user-item id graph; use MF for attributes"
    represents_users = True
    exposes_embeddings = True
    needs_train_matrix = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        num_layers: int = 3,
        reg: float = 1e-4,
        num_negatives: int = 1,
        init: str = "normal",
        init_std: float = 0.1,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        require(num_layers >= 0, "num_layers", num_layers, "an integer >= 0")
        require(reg >= 0, "reg", reg, ">= 0")
        require(num_negatives >= 1, "num_negatives", num_negatives, "an integer >= 1")
        require(init in ("normal", "xavier"), "init", init, "one of: normal, xavier")
        require(init_std > 0, "init_std", init_std, "> 0")
        self.num_layers, self.reg = int(num_layers), float(reg)
        self.num_negatives = int(num_negatives)
        self.user_emb = nn.Embedding(num_users, embedding_size)
        self.item_emb = nn.Embedding(num_items, embedding_size)
        for table in (self.user_emb, self.item_emb):
            if init == "xavier":  # RecBole's: uniform, Glorot's bound
                bound = math.sqrt(6.0 / (table.weight.shape[0] + embedding_size))
                nn.init.uniform_(table.weight, -bound, bound)
            else:  # the paper's code: normal, std 0.1
                nn.init.normal_(table.weight, std=init_std)
        # the training edges (user, item), distinct: saved with the weights
        self.register_buffer("edge_user", torch.zeros(0, dtype=torch.long))
        self.register_buffer("edge_item", torch.zeros(0, dtype=torch.long))
        # eval mode: the final embeddings of the current weights (not saved; a traced scorer
        # reads them as buffers) and the key they were computed for
        self.register_buffer("final_user", torch.zeros(num_users, embedding_size), persistent=False)
        self.register_buffer("final_item", torch.zeros(num_items, embedding_size), persistent=False)
        self._graph: tuple[Any, tuple[Tensor, Tensor]] | None = None
        self._cache_key: tuple[Any, ...] | None = None

    # -- the graph --------------------------------------------------------------------------
    def set_train_matrix(self, train: Tensor) -> None:
        """Take the (U, I) sparse training matrix's distinct events as the graph's edges."""
        u, i = train.coalesce().indices()
        device = self.user_emb.weight.device
        self.edge_user = u.to(device=device, dtype=torch.long)
        self.edge_item = i.to(device=device, dtype=torch.long)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the edge buffers take the saved graph's size (they are empty when built)
        for name in ("edge_user", "edge_item"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self.user_emb.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _normalised(self) -> tuple[Tensor, Tensor]:
        w = self.user_emb.weight
        key = (
            self.edge_user.data_ptr(),
            self.edge_user._version,
            len(self.edge_user),
            w.device,
            w.dtype,
        )
        if self._graph is None or self._graph[0] != key:
            self._graph = (
                key,
                normalised(self.edge_user, self.edge_item, self.num_users, self.num_items, w.dtype),
            )
        return self._graph[1]

    # -- propagation ------------------------------------------------------------------------
    def propagate(self) -> tuple[Tensor, Tensor]:
        """(U, d), (I, d): the layer means of the propagated embeddings."""
        users, items = self.user_emb.weight, self.item_emb.weight
        if not self.training:
            key = (users._version, items._version, users.data_ptr(), items.data_ptr())
            key += (self.edge_user._version, self.edge_user.data_ptr(), len(self.edge_user))
            if self._cache_key == key:
                return self.final_user, self.final_item
        r, rt = self._normalised()
        sum_u, sum_i = users, items
        eu, ei = users, items
        for _ in range(self.num_layers):
            eu, ei = _Propagate.apply(r, rt, eu, ei)
            sum_u, sum_i = sum_u + eu, sum_i + ei
        out_u, out_i = sum_u / (self.num_layers + 1), sum_i / (self.num_layers + 1)
        if self.training:
            return out_u, out_i
        self.final_user, self.final_item = out_u.detach(), out_i.detach()
        self._cache_key = key
        return self.final_user, self.final_item

    def train(self, mode: bool = True) -> LightGCN:
        """Switching to eval mode propagates once, so every scoring call of an evaluation pass
        (and a traced scorer) reads the cached final embeddings."""
        super().train(mode)
        self._cache_key = None
        if not mode:
            with torch.no_grad():
                self.propagate()
        return self

    # -- the contract ------------------------------------------------------------------------
    def loss(self, batch: PairBatch) -> dict[str, Tensor]:
        assert batch.neg is not None, "LightGCN needs sampled negatives (num_negatives >= 1)"
        fu, fi = self.propagate()
        u = fu.index_select(0, batch.user)  # (B, d)
        pos = fi.index_select(0, batch.item)  # (B, d)
        neg = fi.index_select(0, batch.neg.reshape(-1)).view(*batch.neg.shape, -1)  # (B, N, d)
        s_pos = (u * pos).sum(-1, keepdim=True)  # (B, 1)
        s_neg = (u.unsqueeze(1) * neg).sum(-1)  # (B, N)
        bpr = F.softplus(s_neg - s_pos).mean()
        out = {"loss": bpr, "bpr": bpr}
        if self.reg:
            ego = (
                self.user_emb.weight.index_select(0, batch.user).square().sum()
                + self.item_emb.weight.index_select(0, batch.item).square().sum()
                + self.item_emb.weight.index_select(0, batch.neg.reshape(-1)).square().sum()
                / batch.neg.shape[1]
            )
            out["loss"] = bpr + self.reg * ego / (2 * len(batch.user))
        return out

    def score(self, users: UserBatch) -> Tensor:
        fu, fi = self.propagate()
        return fu[users.user] @ fi.T  # (B, I)

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the users' propagated embeddings."""
        return self.propagate()[0][users.user]

    def embeddings(self) -> dict[str, Tensor]:
        """The propagated tables: score(u, i) = user[u] · item[i]."""
        fu, fi = self.propagate()
        return {"user": fu, "item": fi}
