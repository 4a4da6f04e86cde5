"""EASE and Item-kNN against dense brute-force computations on a tiny matrix, EASE's memory
refusal, and both beating popularity on planted taste groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.ease import EASE, ease_memory_bytes
from recsys.models.itemknn import ItemKNN
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config


def tiny_matrix(seed: int = 0, users: int = 12, items: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((users, items)) < 0.4).astype(np.float64)
    x[0, :] = 0.0  # a user without history
    x[:, -1] = 0.0  # an item nobody saw
    return x


def sparse(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).to_sparse_coo().float()


def all_users(x: np.ndarray) -> UserBatch:
    return UserBatch.from_lists(list(range(len(x))), [list(np.flatnonzero(r)) for r in x])


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ease_equals_per_item_ridge_regression_with_zero_diagonal(precision):
    x, lam = tiny_matrix(), 3.0
    model = EASE(num_users=x.shape[0], num_items=x.shape[1], reg=lam, precision=precision)
    model.fit(sparse(x))
    # definition: column j of B regresses item j on every other item with an L2 penalty lam
    n = x.shape[1]
    expected = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        a = x[:, others]
        expected[others, j] = np.linalg.solve(a.T @ a + lam * np.eye(n - 1), a.T @ x[:, j])
    np.testing.assert_allclose(model.weight.numpy(), expected, rtol=1e-4, atol=1e-5)
    scores = model.score(all_users(x))
    np.testing.assert_allclose(scores.numpy(), x @ expected, rtol=1e-4, atol=1e-5)


def test_ease_refuses_a_catalogue_that_does_not_fit():
    with pytest.raises(ConfigError, match=r"item-item matrix needs about .* GiB"):
        EASE(num_users=10, num_items=2_000_000)
    with pytest.raises(ConfigError, match="model.max_memory_gb"):
        EASE(num_users=10, num_items=20_000, max_memory_gb=1.0)
    # auto: float64 when it fits, else float32 (2,000 items: 107 MiB in float64, 61 in float32)
    assert EASE(num_users=10, num_items=2_000, max_memory_gb=0.2).precision == "float64"
    assert EASE(num_users=10, num_items=2_000, max_memory_gb=0.08).precision == "float32"
    big = 20_000 * 20_000
    assert ease_memory_bytes(20_000, "float64") == big * 28
    assert ease_memory_bytes(20_000, "float32") == big * 16
    with pytest.raises(ConfigError, match="model.precision"):
        EASE(num_users=10, num_items=20, precision="float16")


@pytest.mark.parametrize("k,shrink", [(2, 0.0), (3, 1.5), (10, 0.0)])
def test_itemknn_equals_brute_force_cosine_neighbours(k, shrink):
    x = tiny_matrix(seed=1)
    n = x.shape[1]
    model = ItemKNN(num_users=x.shape[0], num_items=n, k=k, shrink=shrink, block=3)
    model.fit(sparse(x))
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                norm = np.sqrt(x[:, i] @ x[:, i]) * np.sqrt(x[:, j] @ x[:, j])
                sim[i, j] = (x[:, i] @ x[:, j]) / max(norm + shrink, 1e-12)
    kk = min(k, n - 1)
    w = np.zeros((n, n))
    for j in range(n):
        # the kk most similar other items of target j (ties: any order; values decide the score)
        cand = [i for i in range(n) if i != j]
        top = sorted(cand, key=lambda i: -sim[i, j])[:kk]
        w[top, j] = sim[top, j]
    # equal as sets of kept similarity values per target (robust to ties among equal values)
    got = model.similarity().to_dense().numpy()
    np.testing.assert_allclose(np.sort(got, 0), np.sort(w, 0), rtol=1e-5, atol=1e-6)
    scores = model.score(all_users(x)).numpy()
    np.testing.assert_allclose(scores, x @ got, rtol=1e-5, atol=1e-6)
    kept = got != 0  # every kept entry is the true similarity of that (neighbour, target) pair
    np.testing.assert_allclose(got[kept], sim[kept], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["ease", "itemknn"])
def test_closed_form_models_beat_popularity_on_planted_groups(model, tmp_path):
    cfg = compose_config("train", TINY_DATA + FAST_TRAINER + [f"model={model}", "seed=3"], tmp_path)
    m = train(cfg)
    ours, pop = m["test"]["ndcg@10"], m["baseline"]["test"]["ndcg@10"]
    assert ours > 1.2 * pop, f"{model}: ndcg@10 {ours:.4f} vs popularity {pop:.4f}"
