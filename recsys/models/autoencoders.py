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

Training batches are :class:`~recsys.data.batches.UserBatch` es of training rows, densified per
batch on the device (an epoch iterates over users). ``score`` is one deterministic forward pass
(no dropout; the VAE uses ``z = mu``) of whatever history the batch carries, so a known user
and a brand-new history with the same items get the same scores (fold-in).

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


def _linears(dims: Sequence[int]) -> nn.ModuleList:
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.normal_(layer.bias, std=0.001)
    return layers


def _run(layers: nn.ModuleList, h: Tensor) -> Tensor:
    """Apply ``layers`` with tanh between them (none after the last)."""
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < len(layers) - 1:
            h = torch.tanh(h)
    return h


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


def _multinomial_nll(logits: Tensor, x: Tensor) -> Tensor:
    """Mean over users of ``-sum_i x_i log softmax(logits)_i``; logits, x: (B, I)."""
    return -(F.log_softmax(logits, dim=1) * x).sum(1).mean()


class MultDAE(Recommender):
    """Mult-DAE (Liang et al., WWW 2018): a denoising autoencoder with multinomial likelihood."""

    train_batch = "users"

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
        self.encoder = _linears([num_items, *dims])
        self.decoder = _linears([*dims[::-1], num_items])

    def forward(self, x: Tensor, corrupt: bool) -> Tensor:
        """(B, I) logits for (B, I) multi-hot rows ``x``; dropout on the input if ``corrupt``."""
        h = F.normalize(x, dim=1)
        if corrupt:
            h = F.dropout(h, self.dropout, training=True)
        h = torch.tanh(_run(self.encoder, h))  # (B, d): the code
        return _run(self.decoder, h)

    def loss(self, batch: UserBatch) -> dict[str, Tensor]:
        x = batch.dense(self.num_items)  # (B, I)
        nll = _multinomial_nll(self(x, corrupt=self.training), x)
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
        self.encoder = _linears([num_items, *dims[:-1], 2 * dims[-1]])
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
        x = batch.dense(self.num_items)  # (B, I)
        mu, logvar = self.encode(x, corrupt=self.training)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        nll = _multinomial_nll(_run(self.decoder, z), x)
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
