"""Autoencoders with a multinomial likelihood: Mult-VAE and Mult-DAE.

Liang, Krishnan, Hoffman, Jebara. "Variational Autoencoders for Collaborative Filtering",
WWW 2018. A user is the bag of items in their history, ``x`` (a multi-hot row over the
catalogue). The input is L2-normalised, passed through dropout (the "denoising" corruption)
and an MLP encoder; a decoder MLP maps the code back to one logit per item, and the training
objective is the multinomial log-likelihood of the history under ``softmax(logits)``:

    log p(x | z) = sum_i x_i log softmax(f(z))_i

- **Mult-VAE** encodes to a Gaussian ``q(z | x) = N(mu, diag(exp(logvar)))``, samples ``z``
  with the reparameterisation trick while training, and minimises
  ``-log p(x | z) + beta * KL(q(z | x) || N(0, I))``, averaged over the users of a batch.
  ``beta`` is annealed linearly with the number of updates, ``beta = min(anneal_cap,
  step / total_anneal_steps)``; ``step`` is a registered buffer (``anneal_step``), so it is in
  every checkpoint and a resumed run continues the schedule where it stopped.
- **Mult-DAE** is the deterministic counterpart: the code is a point, the loss is the negative
  log-likelihood plus ``reg * sum ||W||^2`` over the weight matrices (not the biases).

Layer sizes: ``hidden_dims`` lists the encoder's sizes after the input, the last one being the
code (latent) size; the decoder mirrors them. ``[600, 200]`` gives the paper's Mult-VAE,
``I -> 600 -> 200 -> 600 -> I``; Mult-DAE's paper default is ``[200]``, ``I -> 200 -> I``.
Every layer but the last of the encoder (VAE: it outputs ``mu`` and ``logvar``) and the last of
the decoder is followed by ``tanh``.

Training batches are :class:`~recsys.data.batches.UserBatch` es of training rows (an epoch
iterates over users). The training input is never densified: the first encoder layer
(:class:`ItemInput`) keeps its weight item-major, ``(I, d)``, and applies the normalised, dropped-out
multi-hot rows as a weighted ``embedding_bag`` over each user's items, so its forward and backward
cost O(nnz · d) instead of O(B · I · d), and input dropout draws one number per history item, not
per catalogue item. The multinomial log-likelihood gathers the log-probabilities of the history
items from the (B, I) logits, which are the one dense per-batch tensor. ``score`` is one
deterministic forward pass (no dropout; the VAE uses ``z = mu``) of whatever history the batch
carries, on the densified rows (a plain matmul, so the export traces it), and computes the same
function as the sparse training path; a known user and a brand-new history with the same items get
the same scores (fold-in).

Deviations from the reference implementation: none in the model. Weights use Xavier-uniform
and biases N(0, 0.001²) as in the paper's code. The KL term is averaged over users as there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.batches import UserBatch
from recsys.models.base import Recommender, require


class ItemInput(nn.Module):
    """The first encoder layer, ``I -> d``, with its weight stored item-major: ``(I, d)``.

    ``forward`` takes dense (B, I) rows (scoring, export); ``bag`` takes the rows as sparse
    (item, value) lists per user and is an ``embedding_bag`` (training): same function, cost
    proportional to the number of history items. Checkpoints written when this layer was an
    ``nn.Linear`` (weight ``(d, I)``) load with the weight transposed.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight)

    def bag(self, items: Tensor, offsets: Tensor, values: Tensor) -> Tensor:
        """(B, d): row b is ``sum_j values[j] * weight[items[j]]`` over ``j`` in user b's slice
        ``offsets[b]:offsets[b + 1]`` (``offsets``: (B,) starts), plus the bias."""
        h = F.embedding_bag(items, self.weight, offsets, mode="sum", per_sample_weights=values)
        return h + self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.shape == (self.out_features, self.in_features) != self.weight.shape:
            state_dict[prefix + "weight"] = w.t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _linears(dims: Sequence[int], item_input: bool = False) -> nn.ModuleList:
    """Layers ``dims[0] -> dims[1] -> ...``; the first an :class:`ItemInput` if ``item_input``."""
    pairs = list(zip(dims[:-1], dims[1:], strict=True))
    layers = nn.ModuleList(
        ItemInput(a, b) if item_input and i == 0 else nn.Linear(a, b)
        for i, (a, b) in enumerate(pairs)
    )
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)  # symmetric in fan-in/fan-out: layout-agnostic
        nn.init.normal_(layer.bias, std=0.001)
    return layers


def _run(layers: nn.ModuleList, h: Tensor, first_done: bool = False) -> Tensor:
    """Apply ``layers`` with tanh between them (none after the last); ``first_done``: ``h`` is
    already the first layer's output (the sparse input path)."""
    for i, layer in enumerate(layers):
        if not (first_done and i == 0):
            h = layer(h)
        if i < len(layers) - 1:
            h = torch.tanh(h)
    return h


class _Rows:
    """A batch's multi-hot rows, sparse: unique (row, item) pairs sorted by row.

    ``values`` are the L2-normalised rows' entries (``1 / sqrt(n_b)`` for a user with ``n_b``
    distinct items), optionally with dropout applied entry-wise (kept entries scaled by
    ``1 / (1 - p)``), exactly as ``F.dropout(F.normalize(dense))`` treats the non-zeros.
    """

    def __init__(self, batch: UserBatch, num_items: int):
        b = len(batch)
        key = torch.unique(batch.rows() * num_items + batch.items)  # repeats collapse, as dense()
        self.n_users = b
        self.rows, self.items = key // num_items, key % num_items
        counts = torch.bincount(self.rows, minlength=b)
        self.starts = torch.cumsum(counts, 0) - counts
        self.norm = counts.clamp(min=1).float().rsqrt()[self.rows]

    def values(self, dropout: float) -> Tensor:
        return F.dropout(self.norm, dropout, training=True) if dropout else self.norm

    def nll(self, logits: Tensor) -> Tensor:
        """Mean over users of ``-sum_i x_i log softmax(logits)_i`` (x the multi-hot rows)."""
        return -F.log_softmax(logits, dim=1)[self.rows, self.items].sum() / self.n_users


def _check_dims(hidden_dims: Sequence[int], dropout: float, reg: float) -> list[int]:
    dims = (
        list(hidden_dims)
        if isinstance(hidden_dims, Sequence) and not isinstance(hidden_dims, str)
        else []
    )
    require(
        len(dims) >= 1 and all(isinstance(d, int) and d >= 1 for d in dims),
        "hidden_dims",
        hidden_dims,
        "a non-empty list of positive integers (encoder sizes, the last is the latent size)",
    )
    require(0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
    require(reg >= 0, "reg", reg, ">= 0")
    return dims


class MultDAE(Recommender):
    """Mult-DAE (Liang et al., WWW 2018): a denoising autoencoder with multinomial likelihood."""

    train_batch = "users"
    no_features = "input and output are the interaction row, no item representation to extend"
    scores_history = True  # fold-in: the code of whatever history the batch carries
    represents_users = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        hidden_dims: Sequence[int] = (200,),
        dropout: float = 0.5,
        reg: float = 0.0,
    ):
        super().__init__(num_users, num_items)
        dims = _check_dims(hidden_dims, dropout, reg)
        self.dropout, self.reg = float(dropout), float(reg)
        self.encoder = _linears([num_items, *dims], item_input=True)
        self.decoder = _linears([*dims[::-1], num_items])

    def forward(self, x: Tensor, corrupt: bool) -> Tensor:
        """(B, I) logits for (B, I) multi-hot rows ``x``; dropout on the input if ``corrupt``."""
        h = F.normalize(x, dim=1)
        if corrupt:
            h = F.dropout(h, self.dropout, training=True)
        h = torch.tanh(_run(self.encoder, h))  # (B, d): the code
        return _run(self.decoder, h)

    def loss(self, batch: UserBatch) -> dict[str, Tensor]:
        x = _Rows(batch, self.num_items)  # sparse: the input is never (B, I)
        v = x.values(self.dropout if self.training else 0.0)
        h = torch.tanh(_run(self.encoder, self.encoder[0].bag(x.items, x.starts, v), True))
        nll = x.nll(_run(self.decoder, h))
        out = {"loss": nll, "nll": nll}
        if self.reg:
            l2 = sum(m.weight.pow(2).sum() for m in (*self.encoder, *self.decoder))
            out["loss"] = nll + self.reg * l2
        return out

    @torch.no_grad()
    def score(self, users: UserBatch) -> Tensor:
        return self(users.dense(self.num_items), corrupt=False)

    @torch.no_grad()
    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the code of the users' histories (no dropout)."""
        h = F.normalize(users.dense(self.num_items), dim=1)
        return torch.tanh(_run(self.encoder, h))


class MultVAE(Recommender):
    """Mult-VAE^PR (Liang et al., WWW 2018): a VAE with multinomial likelihood and KL annealing."""

    train_batch = "users"
    no_features = "input and output are the interaction row, no item representation to extend"
    scores_history = True  # fold-in: the code of whatever history the batch carries
    represents_users = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        hidden_dims: Sequence[int] = (600, 200),
        dropout: float = 0.5,
        anneal_cap: float = 0.2,
        total_anneal_steps: int = 200_000,
        reg: float = 0.0,
    ):
        super().__init__(num_users, num_items)
        dims = _check_dims(hidden_dims, dropout, reg)
        require(0 <= anneal_cap, "anneal_cap", anneal_cap, ">= 0")
        require(
            isinstance(total_anneal_steps, int) and total_anneal_steps >= 0,
            "total_anneal_steps",
            total_anneal_steps,
            "an integer >= 0 (0: beta = anneal_cap from the first update)",
        )
        self.dropout, self.reg = float(dropout), float(reg)
        self.anneal_cap, self.total_anneal_steps = float(anneal_cap), int(total_anneal_steps)
        self.latent_dim = dims[-1]
        # the last encoder layer outputs mu and logvar side by side
        self.encoder = _linears([num_items, *dims[:-1], 2 * dims[-1]], item_input=True)
        self.decoder = _linears([*dims[::-1], num_items])
        # updates done so far: drives beta; a buffer so checkpoints carry it and resume continues
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))

    def beta(self, step: int | None = None) -> float:
        """KL weight at update ``step`` (default: the current one), before that update."""
        s = int(self.anneal_step) if step is None else int(step)
        if self.total_anneal_steps == 0:
            return self.anneal_cap
        return min(self.anneal_cap, s / self.total_anneal_steps)

    def encode(self, x: Tensor, corrupt: bool) -> tuple[Tensor, Tensor]:
        """(B, d) mean and log-variance of q(z | x) for (B, I) multi-hot rows."""
        h = F.normalize(x, dim=1)
        if corrupt:
            h = F.dropout(h, self.dropout, training=True)
        h = _run(self.encoder, h)  # (B, 2d)
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def loss(self, batch: UserBatch) -> dict[str, Tensor]:
        x = _Rows(batch, self.num_items)  # sparse: the input is never (B, I)
        v = x.values(self.dropout if self.training else 0.0)
        h = _run(self.encoder, self.encoder[0].bag(x.items, x.starts, v), True)  # (B, 2d)
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        nll = x.nll(_run(self.decoder, z))
        kl = (0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(1)).mean()
        beta = self.beta()
        if self.training:  # one call of loss per optimiser update
            self.anneal_step += 1
        loss = nll + beta * kl
        if self.reg:
            loss = loss + self.reg * sum(
                m.weight.pow(2).sum() for m in (*self.encoder, *self.decoder)
            )
        return {"loss": loss, "nll": nll, "kl": kl, "beta": torch.tensor(beta)}

    @torch.no_grad()
    def score(self, users: UserBatch) -> Tensor:
        mu, _ = self.encode(users.dense(self.num_items), corrupt=False)
        return _run(self.decoder, mu)  # (B, I)

    @torch.no_grad()
    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the latent mean of q(z | history)."""
        return self.encode(users.dense(self.num_items), corrupt=False)[0]
