r"""Top-K ranking metrics with binary relevance, per user, as pure tensor functions.

For a user with relevant set :math:`R` (``n_rel = |R|``) and ranked list with hit indicators
:math:`h_1, \dots, h_K` (:math:`h_i = 1` when the item at rank :math:`i` is relevant):

- ``hit@K``       :math:`= \max_{i \le K} h_i`
- ``precision@K`` :math:`= \frac{1}{K} \sum_{i \le K} h_i`
- ``recall@K``    :math:`= \frac{1}{|R|} \sum_{i \le K} h_i`
- ``recall_capped@K`` :math:`= \frac{1}{\min(K, |R|)} \sum_{i \le K} h_i`: Recall@K as defined
  by Liang et al. (WWW 2018) for Mult-VAE, also used by EASE; it reaches 1 whenever the top K
  are all relevant, even when the user has more than K relevant items
- ``ndcg@K``      :math:`= \mathrm{DCG}/\mathrm{IDCG}`, :math:`\mathrm{DCG} = \sum_{i \le K}
  h_i / \log_2(i + 1)`, IDCG the DCG of :math:`\min(K, |R|)` hits at the top
- ``mrr@K``       :math:`= 1 / \text{rank of the first hit}` (0 without a hit in the top K)
- ``map@K``       :math:`= \frac{1}{\min(K, |R|)} \sum_{i \le K} h_i \, \mathrm{precision@}i`

Users with no relevant item are not evaluated (the loaders never emit them). Values are per
user; a stage's metric is their mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("recall", "precision", "ndcg", "map", "mrr", "hit", "recall_capped")


def ranked_hits(scores: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-``k`` items (B, k), best first, and whether each is a target (B, k) bool.

    Args:
        scores: (B, I) item scores; excluded items already set to ``-inf``.
        target: (B, I) bool relevance.
    """
    top = torch.topk(scores, k, dim=1, sorted=True).indices  # (B, k)
    return top, torch.gather(target, 1, top)


def topk_hits(scores: Tensor, target: Tensor, k: int) -> Tensor:
    """(B, k) bool: whether each of the top-``k`` scored items is a target."""
    return ranked_hits(scores, target, k)[1]


def ranking_metrics(
    hits: Tensor, n_rel: Tensor, ks: list[int], metrics: tuple[str, ...] | list[str] = METRICS
) -> dict[str, Tensor]:
    """Per-user metric values ``{"ndcg@10": (B,), ...}`` from top-K hits.

    Args:
        hits: (B, K) bool, K >= max(ks): relevance of the ranked items, best first.
        n_rel: (B,) number of relevant items of each user (> 0).
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(METRICS)}")
    h = hits.float()
    n_rel = n_rel.to(h.dtype)
    K = h.shape[1]
    rank = torch.arange(1, K + 1, device=h.device, dtype=h.dtype)  # 1-based
    discount = 1.0 / torch.log2(rank + 1.0)
    cum_hits = torch.cumsum(h, dim=1)  # hits within the top i
    dcg = torch.cumsum(h * discount, dim=1)
    idcg_table = torch.cumsum(discount, 0)  # IDCG with n hits at the top = idcg_table[n - 1]
    prec_at_i = cum_hits / rank
    ap_terms = torch.cumsum(prec_at_i * h, dim=1)
    # reciprocal rank of the first hit within the top i: max over j <= i of h_j / j
    rr = torch.cummax(h / rank, dim=1).values
    out: dict[str, Tensor] = {}
    for k in ks:
        c = k - 1
        n_ideal = torch.clamp(n_rel, max=k)
        for m in metrics:
            if m == "hit":
                v = (cum_hits[:, c] > 0).to(h.dtype)
            elif m == "precision":
                v = cum_hits[:, c] / k
            elif m == "recall":
                v = cum_hits[:, c] / n_rel
            elif m == "recall_capped":
                v = cum_hits[:, c] / n_ideal
            elif m == "ndcg":
                v = dcg[:, c] / idcg_table[n_ideal.long() - 1]
            elif m == "mrr":
                v = rr[:, c]
            else:  # map
                v = ap_terms[:, c] / n_ideal
            out[f"{m}@{k}"] = v
    return out
