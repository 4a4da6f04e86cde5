"""iALS: implicit alternating least squares (Hu, Koren & Volinsky, ICDM 2008), in the form of
Rendle et al. (RecSys 2022, "Revisiting the Performance of iALS on Item Recommendation
Benchmarks"): with user factors ``w_u``, item factors ``h_i`` and the set ``S`` of observed
(user, item) pairs (repeats counted once), minimise

    Σ_{(u,i)∈S} (w_u·h_i - 1)²  +  α₀ Σ_u Σ_i (w_u·h_i)²
      + λ ( Σ_u (|I_u| + α₀|I|)^ν ‖w_u‖²  +  Σ_i (|U_i| + α₀|U|)^ν ‖h_i‖² )

(``unobserved_weight`` α₀, ``reg`` λ, ``reg_exponent`` ν: ν = 1 is Rendle et al.'s
frequency-scaled regularisation, ν = 0 the classic constant one). Hu et al.'s confidence form
``c_ui = 1 + α`` is the same objective up to scale with α₀ = 1 / α.

With the item factors fixed, each user's factors solve the normal equations

    (Σ_{i∈I_u} h_i h_iᵀ + α₀ HᵀH + λ_u I) w_u = Σ_{i∈I_u} h_i,    λ_u = λ (|I_u| + α₀|I|)^ν,

and symmetrically for items. One iteration (``iterations`` of them) solves every user, then every
item, as batched tensor operations (no loop over users):

- ``solver: cholesky``: exact, the per-user Gram matrices built from padded blocks of similar
  lengths by ``bmm``, then a batched Cholesky solve;
- ``solver: cg``: ``cg_steps`` conjugate-gradient steps warm-started from the current factors, as
  ``implicit`` does (its default: 3); each step is one sparse product with the observed pairs,
  no d × d matrix per user, so it is the faster one for large factor counts.

Closed form in the sense of the contract (``train_batch = None``): ``fit`` runs all iterations on
the training matrix; the number of iterations is a hyper-parameter chosen on validation (as in
Rendle et al. and ``implicit``). Deviation from the paper: the factors of a user or item without
training events are zero (their optimum), not left at the random initialisation.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from recsys.data.batches import UserBatch
from recsys.models.base import Recommender, require

SOLVERS = ("cholesky", "cg")
# padded block of the Cholesky solver: at most this many (row, position, factor) floats
_BLOCK_FLOATS = 1 << 22


class _Side:
    """One side of the factorisation: the rows being solved (users or items) as a CSR of the
    observed pairs against the fixed factors of the other side."""

    def __init__(self, crow: Tensor, col: Tensor, n_cols: int):
        self.crow, self.col = crow, col
        self.n_rows = len(crow) - 1
        self.counts = crow[1:] - crow[:-1]  # (R,)
        self.rows = torch.repeat_interleave(
            torch.arange(self.n_rows, device=col.device), self.counts, output_size=len(col)
        )  # (nnz,) the row of each pair
        self.n_cols = n_cols

    def weighted(self, values: Tensor) -> Tensor:
        """The (R, C) CSR matrix of the observed pairs holding ``values`` (nnz,)."""
        return csr_matrix(self.crow, self.col, values, (self.n_rows, self.n_cols))


def csr_matrix(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor (its products with dense matrices are the fast CPU path), without
    torch's notice that CSR support is in beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _csr(rows: Tensor, cols: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """CSR (crow, col) of the pairs, sorted by row then column (pairs distinct)."""
    order = torch.argsort(rows * (int(cols.max()) + 1 if len(cols) else 1) + cols)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow, cols[order]


def solve_side(
    side: _Side,
    fixed: Tensor,
    current: Tensor,
    reg: float,
    unobserved_weight: float,
    reg_exponent: float,
    solver: str = "cholesky",
    cg_steps: int = 3,
) -> Tensor:
    """(R, d) the factors of every row of ``side`` given the other side's ``fixed`` (C, d)
    factors: the exact solution of each row's normal equations (``cholesky``) or ``cg_steps``
    conjugate-gradient steps from ``current`` (R, d) (``cg``)."""
    d = fixed.shape[1]
    gram = fixed.T @ fixed * unobserved_weight  # (d, d) α₀ FᵀF, shared by every row
    lam = reg * (side.counts.to(fixed.dtype) + unobserved_weight * side.n_cols) ** reg_exponent
    b = side.weighted(torch.ones_like(side.col, dtype=fixed.dtype)) @ fixed  # (R, d) Σ_{c∈row} f_c
    active = side.counts > 0
    if solver == "cg":
        pattern = side.weighted(torch.zeros_like(side.col, dtype=fixed.dtype))
        fixed_t = fixed.T.contiguous()

        def matvec(p: Tensor) -> Tensor:  # A p for every row at once, (R, d)
            # (p_r · f_c) on the observed pairs only, then Σ_c (p_r · f_c) f_c: two sparse products
            t = torch.sparse.sampled_addmm(pattern, p, fixed_t, beta=0)
            return t @ fixed + p @ gram + lam[:, None] * p

        x = current.clone()
        r = b - matvec(x)
        p = r.clone()
        rs = (r * r).sum(1)  # (R,)
        for _ in range(cg_steps):
            ap = matvec(p)
            alpha = rs / (p * ap).sum(1).clamp_min(1e-30)
            x.addcmul_(alpha[:, None], p)
            r.addcmul_(alpha[:, None], ap, value=-1)
            rs_new = (r * r).sum(1)
            p = r + (rs_new / rs.clamp_min(1e-30))[:, None] * p
            rs = rs_new
        return x * active[:, None]
    # exact: A_r = α₀FᵀF + λ_r I + Σ_{c∈row} f_c f_cᵀ, rows in blocks of similar length
    x = torch.zeros_like(current)
    eye = torch.eye(d, dtype=fixed.dtype, device=fixed.device)
    order = torch.argsort(side.counts, descending=True)
    order = order[active[order]]
    start = 0
    while start < len(order):
        longest = int(side.counts[order[start]])
        n = max(1, min(len(order) - start, _BLOCK_FLOATS // max(1, longest * d)))
        block = order[start : start + n]
        start += n
        lengths = side.counts[block]
        pos = torch.arange(longest, device=fixed.device)
        valid = pos[None, :] < lengths[:, None]  # (n, L)
        idx = (side.crow[block][:, None] + pos[None, :]).clamp_max(len(side.col) - 1)
        padded = fixed.index_select(0, side.col[idx].reshape(-1)).view(n, longest, d)
        padded = padded * valid[..., None]  # (n, L, d) the observed f_c, zero-padded
        a = torch.baddbmm(gram.expand(n, d, d), padded.transpose(1, 2), padded)  # (n, d, d)
        a = a + lam[block][:, None, None] * eye
        chol = torch.linalg.cholesky(a)
        x[block] = torch.cholesky_solve(b[block].unsqueeze(-1), chol).squeeze(-1)
    return x


class IALS(Recommender):
    train_batch = None
    no_features = "closed-form least-squares solves over id factors; use MF for attributes"
    represents_users = True
    exposes_embeddings = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_size: int = 64,
        iterations: int = 16,
        reg: float = 0.01,
        unobserved_weight: float = 0.5,
        reg_exponent: float = 1.0,
        init_std: float = 0.1,
        solver: str = "cg",
        cg_steps: int = 3,
    ):
        super().__init__(num_users, num_items)
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        require(iterations >= 1, "iterations", iterations, "an integer >= 1")
        require(reg >= 0, "reg", reg, ">= 0")
        require(unobserved_weight > 0, "unobserved_weight", unobserved_weight, "> 0")
        require(reg_exponent >= 0, "reg_exponent", reg_exponent, ">= 0")
        require(init_std > 0, "init_std", init_std, "> 0")
        require(solver in SOLVERS, "solver", solver, f"one of: {', '.join(SOLVERS)}")
        require(cg_steps >= 1, "cg_steps", cg_steps, "an integer >= 1")
        self.embedding_size = int(embedding_size)
        self.iterations = int(iterations)
        self.reg, self.unobserved_weight = float(reg), float(unobserved_weight)
        self.reg_exponent, self.init_std = float(reg_exponent), float(init_std)
        self.solver, self.cg_steps = solver, int(cg_steps)
        self.register_buffer("user_factors", torch.zeros(num_users, embedding_size))
        self.register_buffer("item_factors", torch.zeros(num_items, embedding_size))

    def sides(self, train: Tensor) -> tuple[_Side, _Side]:
        """The user side (U × I) and item side (I × U) of the binarised training matrix."""
        x = train.coalesce()
        u, i = x.indices()
        return (
            _Side(*_csr(u, i, self.num_users), self.num_items),
            _Side(*_csr(i, u, self.num_items), self.num_users),
        )

    def sweep(self, users: _Side, items: _Side) -> None:
        """One iteration: every user given the items, then every item given the users."""
        args = (self.reg, self.unobserved_weight, self.reg_exponent, self.solver, self.cg_steps)
        self.user_factors = solve_side(users, self.item_factors, self.user_factors, *args)
        self.item_factors = solve_side(items, self.user_factors, self.item_factors, *args)

    @torch.no_grad()
    def fit(self, train: Tensor) -> None:
        """``train``: (num_users, num_items) sparse training events (binarised here). Starts
        from N(0, init_std² / d) factors (Rendle et al.'s initialisation) drawn from torch's
        global generator, then runs ``iterations`` sweeps."""
        std = self.init_std / self.embedding_size**0.5
        self.user_factors = torch.randn_like(self.user_factors) * std
        self.item_factors = torch.randn_like(self.item_factors) * std
        users, items = self.sides(train.to(self.item_factors.device))
        for _ in range(self.iterations):
            self.sweep(users, items)

    def score(self, users: UserBatch) -> Tensor:
        return self.user_factors[users.user] @ self.item_factors.T  # (B, I)

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) the users' factors."""
        return self.user_factors[users.user]

    def embeddings(self) -> dict[str, Tensor]:
        """The factor tables: score(u, i) = user[u] · item[i]."""
        return {"user": self.user_factors, "item": self.item_factors}
