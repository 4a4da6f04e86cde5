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
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import PairBatch, UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender, lookup, require


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
    """Shared loss/score plumbing: subclasses define ``pair_logits`` and ``user_logits``."""

    train_batch = "pairs"
    represents_users = True
    predicts_pairs = True
    # max (user, item) pairs per tower pass in ``score``: 2^16 keeps the (users, items, h)
    # activations near cache size, 2.3x faster than 2^18 on ml-100k (1.9 -> 0.8 CPU s per pass)
    score_chunk = 1 << 16

    def pair_logits(self, user: Tensor, item: Tensor) -> Tensor:
        raise NotImplementedError

    def user_logits(self, user: Tensor) -> Tensor:
        raise NotImplementedError

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        """The user embedding tables, concatenated by :meth:`user_representation`."""
        raise NotImplementedError

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
        return torch.cat([t(users.user) for t in self.user_tables()], -1)

    def score(self, users: UserBatch) -> Tensor:
        step = max(1, self.score_chunk // self.num_items)
        if len(users.user) <= step:
            return self.user_logits(users.user)
        # chunks written into one preallocated (B, I): kept per-chunk results would sit between
        # the freed (users, items, h) activations and fragment the heap (on Amazon Beauty a
        # list + torch.cat of 205 chunks held 3.6 GB for 50 MB of scores)
        w = next(self.parameters())
        out = w.new_empty(len(users.user), self.num_items)
        for s in range(0, len(users.user), step):
            out[s : s + step] = self.user_logits(users.user[s : s + step])
        return out  # (B, I)


class GMF(_PairwiseScorer):
    """Generalized matrix factorization: ``h · (p_u ⊙ q_i)``."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        num_negatives: int = 1,
        init_std: float = 0.01,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        _check_common(num_negatives, 0.0, init_std)
        self.num_negatives = int(num_negatives)
        self.user_emb = _embeddings(num_users, embedding_size, init_std)
        self.item_emb = _embeddings(num_items, embedding_size, init_std)
        self.out = nn.Linear(embedding_size, 1)

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.user_emb,)

    def pair_logits(self, user: Tensor, item: Tensor) -> Tensor:
        return self.out(lookup(self.user_emb, user) * lookup(self.item_emb, item)).squeeze(-1)

    def user_logits(self, user: Tensor) -> Tensor:
        w = self.out.weight[0]  # (d,)
        return (self.user_emb(user) * w) @ self.item_emb.weight.T + self.out.bias  # (B, I)


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
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        _check_common(num_negatives, dropout, init_std)
        self.num_negatives = int(num_negatives)
        self.user_emb = _embeddings(num_users, embedding_size, init_std)
        self.item_emb = _embeddings(num_items, embedding_size, init_std)
        self.tower = Tower(embedding_size, list(mlp_hidden_size or [128, 64]), dropout)
        self.out = nn.Linear(self.tower.out_size, 1)

    def user_tables(self) -> tuple[nn.Embedding, ...]:
        return (self.user_emb,)

    def pair_logits(self, user: Tensor, item: Tensor) -> Tensor:
        u, i = lookup(self.user_emb, user), lookup(self.item_emb, item)
        return self.out(self.tower(u, i)).squeeze(-1)

    def user_logits(self, user: Tensor) -> Tensor:
        x = self.tower.all_items(self.user_emb(user), self.item_emb.weight)  # (B, I, h)
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

    def pair_logits(self, user: Tensor, item: Tensor) -> Tensor:
        gmf = lookup(self.user_mf, user) * lookup(self.item_mf, item)
        mlp = self.tower(lookup(self.user_mlp, user), lookup(self.item_mlp, item))
        return self.out(torch.cat([gmf, mlp], -1)).squeeze(-1)

    def user_logits(self, user: Tensor) -> Tensor:
        d_mf = self.user_mf.weight.shape[1]
        w_mf, w_mlp = self.out.weight[0, :d_mf], self.out.weight[0, d_mf:]
        gmf = (self.user_mf(user) * w_mf) @ self.item_mf.weight.T  # (B, I)
        x = self.tower.all_items(self.user_mlp(user), self.item_mlp.weight)  # (B, I, h)
        return gmf + x @ w_mlp + self.out.bias
