r"""The loss axis of the sequence models, computed on gathered (non-padding) positions only.

For a trained position with hidden state :math:`h`, target item :math:`y` and item table
:math:`W` (tied with the input embeddings), :math:`s_i = h^\top W_i`:

- ``ce``: full softmax cross-entropy :math:`-s_y + \log\sum_{i} e^{s_i}` over every item
  (SASRec+, Klenitskiy & Vasilev, RecSys 2023). One matrix product with the item table per
  batch, cut into row chunks (recomputed in backward) when it would exceed ``chunk_elems``.
- ``sampled_ce``: the same softmax over the target and ``K`` uniformly sampled items
  (accidental hits of the target among the negatives are removed).
- ``bce``: :math:`-\log\sigma(s_y) - \sum_{k \le K}\log(1-\sigma(s_{n_k}))` with ``K`` uniform
  negatives per position (the original SASRec, Kang & McAuley 2018, has K = 1).
- ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023):
  :math:`-\log\sigma(s_y)^{\beta} - \sum_k \log(1-\sigma(s_{n_k}))` with
  :math:`\alpha = K / (I - 1)` and :math:`\beta = \alpha\,(t\,(1 - 1/\alpha) + 1/\alpha)`; the
  calibration ``t`` interpolates between BCE (t = 0, β = 1) and β = α (t = 1).

Each is averaged over the trained positions (gSASRec's code averages over the ``1 + K`` terms
as well; that is a constant factor of ``1 + K``). Negatives are drawn per position with
``torch.randint`` (the module seeds torch per epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

LOSSES = ("bce", "ce", "sampled_ce", "gbce")


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's exponent β of the positive probability."""
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def _ce_sum(h: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    return F.cross_entropy((h @ weight.T).float(), target, reduction="sum")


def full_ce(h: Tensor, target: Tensor, weight: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """Mean softmax cross-entropy over all items. h: (N, d), target: (N,), weight: (I, d)."""
    N, n_items = h.shape[0], weight.shape[0]
    if N * n_items <= chunk_elems or not torch.is_grad_enabled():
        return _ce_sum(h, target, weight) / max(N, 1)
    rows = max(1, chunk_elems // n_items)
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, N, rows):  # each chunk's (rows, I) logits are rebuilt in backward
        total = total + checkpoint(
            _ce_sum, h[s : s + rows], target[s : s + rows], weight, use_reentrant=False
        )
    return total / N


def sequence_loss(
    h: Tensor,
    target: Tensor,
    weight: Tensor,
    loss: str,
    num_negatives: int = 1,
    gbce_t: float = 0.0,
    chunk_elems: int = 1 << 24,
    negatives: Tensor | None = None,
    shared_negatives: bool = False,
) -> Tensor:
    """Scalar loss of ``h`` (N, d) against ``target`` (N,) under ``loss`` (see module doc).

    Negatives are drawn uniformly per position (N, K), or with ``shared_negatives`` once per
    batch (K,) for all positions, as TensorFlow's ``sampled_softmax_loss`` does: one (N, K)
    matrix product and K embedding rows to update instead of N * K. ``negatives`` fixes them
    (tests).
    """
    if loss == "ce":
        return full_ce(h, target, weight, chunk_elems)
    N, n_items = h.shape[0], weight.shape[0]
    neg = negatives
    if neg is None:
        shape = (num_negatives,) if shared_negatives else (N, num_negatives)
        neg = torch.randint(n_items, shape, device=h.device)
    num_negatives = neg.shape[-1]
    s_pos = (h * weight[target]).sum(-1).float()  # (N,)
    if neg.ndim == 1:  # shared by every position
        s_neg = (h @ weight[neg].T).float()  # (N, K)
        hit = neg[None, :] == target[:, None]
    else:
        s_neg = torch.einsum("nd,nkd->nk", h, weight[neg]).float()  # (N, K)
        hit = neg == target[:, None]  # an accidental positive is not a negative
    if loss == "sampled_ce":
        logits = torch.cat([s_pos[:, None], s_neg.masked_fill(hit, float("-inf"))], 1)
        return F.cross_entropy(logits, torch.zeros(N, dtype=torch.long, device=h.device))
    beta = gbce_beta(num_negatives, n_items, gbce_t) if loss == "gbce" else 1.0
    neg_term = (F.logsigmoid(-s_neg) * ~hit).sum(-1)
    return -(beta * F.logsigmoid(s_pos) + neg_term).mean()


def next_item_loss(
    hidden: Tensor,
    target: Tensor,
    pad: int,
    weight: Tensor,
    loss: str,
    num_negatives: int = 1,
    gbce_t: float = 0.0,
    chunk_elems: int = 1 << 24,
    shared_negatives: bool = False,
) -> Tensor:
    """:func:`sequence_loss` at the non-padding positions of ``hidden`` (B, L, d) / ``target``
    (B, L): the real positions are gathered first, so padding costs nothing in the loss."""
    real = target != pad  # (B, L)
    return sequence_loss(
        hidden[real],
        target[real],
        weight,
        loss,
        num_negatives,
        gbce_t,
        chunk_elems,
        shared_negatives=shared_negatives,
    )
