"""Ranking metrics against a hand-worked example and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.metrics.ranking import METRICS, ranking_metrics, topk_hits


def brute_force(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Textbook definitions, one user at a time, in plain Python."""
    top = ranked[:k]
    hits = [1 if i in relevant else 0 for i in top]
    n_rel = len(relevant)
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, n_rel)))
    first = next((r for r, h in enumerate(hits) if h), None)
    ap = sum(sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h) / min(k, n_rel)
    return {
        f"hit@{k}": float(any(hits)),
        f"precision@{k}": sum(hits) / k,
        f"recall@{k}": sum(hits) / n_rel,
        f"ndcg@{k}": dcg / idcg,
        f"mrr@{k}": 0.0 if first is None else 1 / (first + 1),
        f"map@{k}": ap,
    }


def test_hand_worked_example():
    # 6 items; scores rank them 3, 0, 5, 1, 4, 2; relevant items {0, 2, 4}
    scores = torch.tensor([[0.9, 0.5, 0.0, 1.0, 0.3, 0.7]])
    target = torch.zeros(1, 6, dtype=torch.bool)
    target[0, [0, 2, 4]] = True
    hits = topk_hits(scores, target, 3)  # ranked 3, 0, 5 -> miss, hit, miss
    assert hits.tolist() == [[False, True, False]]
    m = ranking_metrics(hits, target.sum(1), [3])
    assert m["hit@3"].item() == 1.0
    assert m["precision@3"].item() == pytest.approx(1 / 3)
    assert m["recall@3"].item() == pytest.approx(1 / 3)
    # DCG = 1/log2(3); IDCG = 1 + 1/log2(3) + 1/2
    assert m["ndcg@3"].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5))
    assert m["mrr@3"].item() == pytest.approx(0.5)
    # AP@3 = (precision@2 * 1) / min(3, 3) = (1/2) / 3
    assert m["map@3"].item() == pytest.approx(1 / 6)


def test_ndcg_normalised_by_min_k_relevant():
    # one relevant item at rank 1: ndcg = 1 whatever K
    hits = torch.tensor([[True, False, False, False]])
    m = ranking_metrics(hits, torch.tensor([1]), [1, 4])
    assert m["ndcg@1"].item() == pytest.approx(1.0)
    assert m["ndcg@4"].item() == pytest.approx(1.0)
    assert m["map@4"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, ks = 40, 30, [1, 5, 10, 20]
    scores = torch.tensor(rng.normal(size=(n_users, n_items)))
    target = torch.tensor(rng.random((n_users, n_items)) < 0.15)
    target[:, 0] |= ~target.any(1)  # every user has a relevant item
    hits = topk_hits(scores, target, max(ks))
    got = ranking_metrics(hits, target.sum(1), ks)
    order = torch.argsort(scores, dim=1, descending=True).tolist()
    for u in range(n_users):
        relevant = set(torch.nonzero(target[u]).flatten().tolist())
        for k in ks:
            for name, value in brute_force(order[u], relevant, k).items():
                assert got[name][u].item() == pytest.approx(value, abs=1e-6), (u, name)
    assert set(got) == {f"{m}@{k}" for m in METRICS for k in ks}


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metrics"):
        ranking_metrics(torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]), [1], ["auc"])
