"""EASE: Embarrassingly Shallow Autoencoder (Steck, WWW 2019).

Closed form, no training loop. With the (users × items) binary training matrix ``X`` and
``G = XᵀX + λ I``, the item-item weights minimising ``‖X - XB‖² + λ‖B‖²`` subject to
``diag(B) = 0`` are

    P = G⁻¹,   B = I - P · diag(1 / diag(P))   (i.e. B_ij = -P_ij / P_jj, B_jj = 0),

and a user's scores are ``x_u B``. B is stored in float32; the inverse is computed in float64
(``precision=float64``), in float32 (``float32``: about 16 instead of 28 bytes per item pair,
so ML-20M's ~27k items fit in ~11 GiB), or in float64 when that fits and float32 otherwise
(``auto``, the default).

B is a dense I × I matrix: construction refuses, with the sizes, a catalogue whose matrix (and
the work space of the inversion) would not fit in the available memory, instead of failing
inside the allocator or swapping the machine to a halt.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender, require

GIB = 1024**3


def available_memory() -> int | None:
    """Bytes of memory available to this process on the CPU (None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


PRECISIONS = ("auto", "float64", "float32")


def ease_memory_bytes(num_items: int, precision: str = "float64") -> int:
    """Peak bytes of a fit: the float32 weights plus three I × I work matrices (the Gram matrix,
    the inverse and the solver's copy) in the inversion's precision."""
    return num_items * num_items * (4 + 3 * (8 if precision == "float64" else 4))


class EASE(Recommender):
    train_batch = None
    no_features = "item-item weights from co-occurrence only, no item representation to extend"
    scores_history = True  # x_u B: the history alone

    def __init__(
        self,
        num_users: int,
        num_items: int,
        reg: float = 250.0,
        max_memory_gb: float | None = None,
        precision: str = "auto",
    ):
        super().__init__(num_users, num_items)
        require(reg > 0, "reg", reg, "> 0")
        require(precision in PRECISIONS, "precision", precision, f"one of {', '.join(PRECISIONS)}")
        require(
            max_memory_gb is None or max_memory_gb > 0,
            "max_memory_gb",
            max_memory_gb,
            "> 0 or null",
        )
        budget = max_memory_gb * GIB if max_memory_gb is not None else available_memory()
        if precision == "auto":
            fits64 = budget is None or ease_memory_bytes(num_items, "float64") <= budget
            precision = "float64" if fits64 else "float32"
        need = ease_memory_bytes(num_items, precision)
        if budget is not None and need > budget:
            raise ConfigError(
                f"model (EASE): the {num_items:,} x {num_items:,} item-item matrix needs about "
                f"{need / GIB:.1f} GiB to fit, more than the {budget / GIB:.1f} GiB "
                f"{'allowed (model.max_memory_gb)' if max_memory_gb is not None else 'of memory available'}; "
                "shrink the catalogue (data.min_item_interactions) or use a factorised model"
            )
        self.reg, self.precision = float(reg), precision
        self.register_buffer("weight", torch.zeros(num_items, num_items))

    def fit(self, train: Tensor) -> None:
        """``train``: (num_users, num_items) sparse tensor of training events (binarised here)."""
        dtype = torch.float64 if self.precision == "float64" else torch.float32
        x = train.coalesce()
        ones = torch.ones_like(x.values(), dtype=dtype)
        x = torch.sparse_coo_tensor(x.indices(), ones, x.shape).coalesce()
        xt = x.t().coalesce()  # (I, U)
        gram = torch.empty(self.num_items, self.num_items, dtype=dtype, device=x.device)
        block = max(1, (1 << 24) // max(1, x.shape[0]))  # items per block: U x block dense columns
        for start in range(0, self.num_items, block):
            cols = torch.arange(start, min(start + block, self.num_items), device=x.device)
            gram[:, cols] = torch.sparse.mm(xt, x.index_select(1, cols).to_dense())  # (I, b)
        gram.diagonal().add_(self.reg)
        p = torch.linalg.inv(gram)
        del gram
        p.div_(-p.diagonal().clone()[None, :])  # B_ij = -P_ij / P_jj, in place
        p.fill_diagonal_(0.0)
        self.weight.copy_(p)

    def score(self, users: UserBatch) -> Tensor:
        # sparse history rows times the dense weight: O(nnz x I) instead of O(B x I x I)
        # (~40x less on Amazon Beauty's 12k items; the rows stay multi-hot, as in the fit)
        hist = users.dense(self.num_items, self.weight.dtype).to_sparse()
        return torch.sparse.mm(hist, self.weight)  # (B, I)
