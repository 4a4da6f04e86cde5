"""LightGCN: propagation and its gradient against a dense reference on a tiny graph, the
evaluation cache (once per pass, invalidated by a step), the graph travelling with the weights,
and the planted signal beyond popularity through the real training path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batches import PairBatch, UserBatch
from recsys.models.lightgcn import LightGCN
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

U, I, D = 7, 9, 4  # noqa: E741 - users, items, factors


def _graph(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(U, I, generator=g) < 0.35).float()
    dense[2] = 0  # an isolated user and item: degree 0, no edge, no division by zero
    dense[:, 5] = 0
    dense[0, 1] = 2  # a repeated event counts once
    return dense


def _dense_reference(dense: np.ndarray, e0: np.ndarray, layers: int) -> np.ndarray:
    """(U + I, d) layer mean of E^{k+1} = D^-1/2 A D^-1/2 E^k over the full bipartite adjacency."""
    r = (dense > 0).astype(np.float64)
    a = np.block([[np.zeros((U, U)), r], [r.T, np.zeros((I, I))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, deg, 1) ** -0.5 * (deg > 0)
    norm = inv[:, None] * a * inv[None, :]
    e, total = e0, e0.copy()
    for _ in range(layers):
        e = norm @ e
        total += e
    return total / (layers + 1)


def _model(layers: int = 3, **kw) -> LightGCN:
    torch.manual_seed(0)
    m = LightGCN(U, I, embedding_size=D, num_layers=layers, **kw).double()
    m.set_train_matrix(_graph().to_sparse())
    return m


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_equals_dense_reference(layers):
    m = _model(layers)
    e0 = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach().numpy()
    want = _dense_reference(_graph().numpy(), e0, layers)
    for training in (True, False):
        m.train(training)
        fu, fi = m.propagate()
        np.testing.assert_allclose(torch.cat([fu, fi]).detach().numpy(), want, rtol=1e-12)


def test_gradient_equals_autograd_through_the_dense_graph():
    m = _model(2)
    w = torch.randn(U + I, D, dtype=torch.float64)
    fu, fi = m.propagate()
    (torch.cat([fu, fi]) * w).sum().backward()
    r = (_graph() > 0).double()
    a = torch.cat([torch.cat([torch.zeros(U, U), r], 1), torch.cat([r.T, torch.zeros(I, I)], 1)])
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.clamp_min(1) ** -0.5, torch.zeros_like(deg))
    norm = inv[:, None] * a * inv[None, :]
    e0 = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach().requires_grad_()
    e, total = e0, e0
    for _ in range(2):
        e = norm @ e
        total = total + e
    ((total / 3) * w).sum().backward()
    torch.testing.assert_close(m.user_emb.weight.grad, e0.grad[:U])
    torch.testing.assert_close(m.item_emb.weight.grad, e0.grad[U:])


def test_loss_is_bpr_plus_ego_l2():
    m = _model(2, reg=0.5)
    batch = PairBatch(
        torch.tensor([0, 1, 3]), torch.tensor([1, 2, 0]), torch.tensor([[4], [6], [7]])
    )
    out = m.loss(batch)
    fu, fi = m.propagate()
    x = (fu[batch.user] * (fi[batch.item] - fi[batch.neg[:, 0]])).sum(1)
    bpr = -torch.nn.functional.logsigmoid(x).mean()
    ego = (
        m.user_emb.weight[batch.user].square().sum()
        + m.item_emb.weight[batch.item].square().sum()
        + m.item_emb.weight[batch.neg[:, 0]].square().sum()
    )
    torch.testing.assert_close(out["bpr"], bpr)
    torch.testing.assert_close(out["loss"], bpr + 0.5 * ego / 2 / 3)


def test_evaluation_propagates_once_per_pass_and_sees_every_step(monkeypatch):
    m = _model(2)
    calls = []
    real = m._normalised
    monkeypatch.setattr(m, "_normalised", lambda: calls.append(1) or real())
    users = UserBatch.from_lists([0, 1], [[1], [2]])
    m.eval()
    with torch.no_grad():
        first = m.score(users)
        for _ in range(3):  # the other chunks of the same pass
            torch.testing.assert_close(m.score(users), first)
    assert len(calls) == 1
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.loss(PairBatch(torch.tensor([0]), torch.tensor([1]), torch.tensor([[3]])))["loss"].backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = m.score(users)
    assert not torch.allclose(after, first), "the cache survived an optimizer step"
    fu, fi = m.propagate()
    torch.testing.assert_close(after, fu[:2] @ fi.T)


def test_the_graph_travels_with_the_state_dict():
    m = _model(2)
    fresh = LightGCN(U, I, embedding_size=D, num_layers=2).double()
    assert len(fresh.edge_user) == 0
    fresh.load_state_dict(m.state_dict())
    m.eval(), fresh.eval()
    users = UserBatch.from_lists([0, 4, 6], [[], [], []])
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(users), m.score(users))


def test_learns_planted_taste_groups_beyond_popularity(tmp_path):
    overrides = ["model=lightgcn", "optim.lr=0.01", "seed=3", "trainer.max_epochs=5"]
    m = train(compose_config("train", TINY_DATA + FAST_TRAINER + overrides, tmp_path))
    ours, pop = m["test"]["ndcg@10"], m["baseline"]["test"]["ndcg@10"]
    assert ours > 1.2 * pop, f"ndcg@10 {ours:.4f} vs popularity {pop:.4f}"
