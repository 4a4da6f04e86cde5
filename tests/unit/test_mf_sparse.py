"""MF with row-sparse gradients (``model.sparse=true``), the row-wise optimizers, and the
training-pair membership table behind negative sampling."""

from __future__ import annotations

import pytest
import torch

from recsys.data.batches import PairBatch
from recsys.data.loaders import PairSet, sample_negatives
from recsys.models import mf
from recsys.models.mf import MF
from recsys.training.optimizers import RowAdagrad, row_updates_of
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config


def _batch(n_neg: int) -> PairBatch:
    return PairBatch(  # repeated users and items: their gradient rows repeat
        user=torch.tensor([0, 3, 3, 8, 0]),
        item=torch.tensor([1, 1, 10, 4, 2]),
        neg=torch.randint(11, (5, n_neg), generator=torch.Generator().manual_seed(n_neg)),
    )


COMPILE = [False, pytest.param(True, marks=pytest.mark.slow, id="compiled")]


@pytest.mark.parametrize("compiled", COMPILE)
@pytest.mark.parametrize("n_neg", [1, 3])
def test_sparse_bpr_equals_autograd_with_row_sparse_gradients(n_neg, compiled):
    torch.manual_seed(0)
    m = MF(9, 11, 5, loss="bpr", num_negatives=n_neg, sparse=True, compile=compiled)
    batch = _batch(n_neg)
    loss = m.loss(batch)["loss"]
    grads = torch.autograd.grad(loss, [m.user_emb.weight, m.item_emb.weight])
    assert all(g.is_sparse for g in grads)
    # only the batch's rows: one per lookup (users B, items (1 + N) B)
    assert grads[0]._nnz() == 5 and grads[1]._nnz() == 5 * (1 + n_neg)
    u, p, q = m.user_emb(batch.user), m.item_emb(batch.item), m.item_emb(batch.neg)
    ref = -torch.nn.functional.logsigmoid(
        (u * p).sum(-1, keepdim=True) - (u[:, None] * q).sum(-1)
    ).mean()
    refs = torch.autograd.grad(ref, [m.user_emb.weight, m.item_emb.weight])
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g.to_dense(), r.to_dense())


def test_sparse_and_dense_mf_score_alike_and_the_config_refuses_a_non_bool():
    torch.manual_seed(1)
    dense = MF(6, 7, 4)
    torch.manual_seed(1)
    sparse = MF(6, 7, 4, sparse=True)
    assert torch.equal(dense.user_emb.weight, sparse.user_emb.weight)
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="model.sparse"):
        MF(6, 7, 4, sparse="yes")
    with pytest.raises(ConfigError, match="model.compile"):
        MF(6, 7, 4, compile=1)


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape)


@pytest.mark.parametrize("compiled", COMPILE)
def test_row_adagrad_counts_each_occurrence_and_leaves_other_rows_alone(compiled):
    torch.manual_seed(0)
    w = torch.randn(5, 4)
    g1, g2 = torch.randn(4), torch.randn(4)
    p = torch.nn.Parameter(w.clone())
    opt = RowAdagrad([p], lr=0.1, eps=1e-8, compile=compiled)
    p.grad = _sparse([2, 2], torch.stack([g1, g2]), w.shape)
    opt.step()
    acc = (g1.square().mean() + g2.square().mean()).reshape(1)
    expected = w[2] - 0.1 * (g1 + g2) / (acc.sqrt() + 1e-8)
    torch.testing.assert_close(p.data[2], expected)
    torch.testing.assert_close(opt.state[p]["sum"][2:3], acc)
    assert torch.equal(p.data[[0, 1, 3, 4]], w[[0, 1, 3, 4]])
    assert torch.equal(opt.state[p]["sum"][[0, 1, 3, 4]], torch.zeros(4))
    # distinct rows: the sparse step is the dense one (a dense gradient counts each row once)
    q, r = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    grad = torch.randn(2, 4)
    q.grad = _sparse([0, 3], grad, w.shape)
    r.grad = q.grad.to_dense()
    RowAdagrad([q], lr=0.1, compile=compiled).step()
    RowAdagrad([r], lr=0.1).step()
    torch.testing.assert_close(q.data, r.data)
    with pytest.raises(ValueError, match="lr"):
        RowAdagrad([q], lr=0.0)


def _adagrad_steps(fused: bool, compiled: bool, n_neg: int, model=None, n_users: int = 9):
    """Three steps of sparse BPR-MF with RowAdagrad, its update in the backward (``fused``) or
    in ``step``; the tables, the accumulators and the losses after them. ``n_users`` < 5 (the
    batch): the compiled fused step gathers the rows again instead of keeping them."""
    torch.manual_seed(0)
    m = model or MF(n_users, 11, 5, loss="bpr", num_negatives=n_neg, sparse=True, compile=compiled)
    opt = RowAdagrad(m.parameters(), lr=0.1, compile=compiled, fused=fused)
    assert m.use_row_updates(row_updates_of(opt)) is fused
    losses = []
    for step in range(3):
        b = _batch(n_neg)
        b.neg.add_(step).remainder_(11)
        b.user.remainder_(n_users)
        loss = m.loss(b)["loss"]
        opt.zero_grad()
        loss.backward()
        assert (m.item_emb.weight.grad is None) is fused  # nothing handed on when fused
        opt.step()
        losses.append(float(loss.detach()))
    m.use_row_updates({})
    state = [opt.state[p]["sum"].clone() for p in (m.user_emb.weight, m.item_emb.weight)]
    return [m.user_emb.weight.detach().clone(), m.item_emb.weight.detach().clone(), *state], losses


@pytest.mark.parametrize(
    ("n_neg", "compiled", "n_users"),
    [
        (1, False, 9),
        (3, False, 9),
        pytest.param(3, True, 9, marks=pytest.mark.slow, id="3-compiled-kept"),
        pytest.param(3, True, 4, marks=pytest.mark.slow, id="3-compiled-regathered"),
    ],
)
def test_row_adagrad_in_the_backward_takes_the_same_steps(n_neg, compiled, n_users):
    """``fused=True``: MF applies the optimizer's row updates to the gradient rows in its
    backward; tables, accumulators and losses equal those of the ordinary sparse step (the same
    arithmetic, the rows' sums in another order: 1e-6). Compiled, both ways of getting the rows
    (kept from the forward: more users than the batch; gathered again: fewer)."""
    mf._UPDATE_STEPS.clear()
    fused, fused_losses = _adagrad_steps(True, compiled, n_neg, n_users=n_users)
    if compiled:  # the way named in the test's id was taken
        assert [kept for *_, kept in mf._UPDATE_STEPS] == [n_users > 5]
    plain, plain_losses = _adagrad_steps(False, compiled, n_neg, n_users=n_users)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert fused_losses == pytest.approx(plain_losses, rel=1e-6)
    assert fused[2].max() > 0 and fused[3].max() > 0  # the steps were taken


def test_row_updates_are_refused_where_mf_does_not_compute_its_gradient_rows():
    """Dense tables, ``reg`` or another loss keep ordinary gradients; torch optimizers and a
    RowAdagrad without ``fused`` offer no row updates."""
    rows = row_updates_of(RowAdagrad(MF(4, 5, 3, sparse=True).parameters(), fused=True))
    assert len(rows) == 2
    for kwargs in ({"sparse": False}, {"sparse": True, "reg": 0.1}, {"loss": "softmax"}):
        m = MF(4, 5, 3, **kwargs)
        assert not m.use_row_updates(row_updates_of(RowAdagrad(m.parameters(), fused=True)))
    m = MF(4, 5, 3, sparse=True)
    assert row_updates_of(RowAdagrad(m.parameters())) == {}
    assert row_updates_of(torch.optim.SGD(m.parameters(), lr=0.1)) == {}


def test_fused_row_adagrad_trains_as_the_plain_step_through_recsys_train(tmp_path, monkeypatch):
    """The real training loop binds the updates when training starts (after a resumed state is
    loaded) and unbinds them at the end: the same metrics with ``optim.fused`` on and off."""
    bound: list[bool] = []
    use = MF.use_row_updates
    monkeypatch.setattr(MF, "use_row_updates", lambda m, u: bound.append(use(m, u)) or bound[-1])
    base = TINY_DATA + FAST_TRAINER + ["model=mf", "model.sparse=true", "model.compile=false"]
    base += ["optim=row_adagrad", "optim.lr=0.05", "optim.compile=false", "seed=3"]
    base += ["optim.steps_per_call=4", "trainer.max_epochs=3"]
    runs = {}
    for f in ("true", "false"):
        runs[f] = train(compose_config("train", base + [f"optim.fused={f}"], tmp_path / f))
        assert bound == ([True, False] if f == "true" else [False, False])  # start, end
        bound.clear()
    for split in ("val", "test"):
        for key, value in runs["false"][split].items():
            assert runs["true"][split][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("bitset", [True, False])
def test_pair_set_answers_as_the_sorted_keys(bitset):
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 37, 70  # keys cross many 64-bit words, bit 63 included
    user = torch.randint(n_users, (900,), generator=g)
    item = torch.randint(n_items, (900,), generator=g)  # with repeated pairs
    pairs = PairSet(user, item, n_items, bitset=bitset)
    assert (pairs.bits is not None) == bitset
    keys = torch.arange(n_users * n_items)
    truth = torch.isin(keys, user * n_items + item)
    assert torch.equal(pairs.contains(keys), truth)
    # the sampler draws the same negatives with either table, and with the bare sorted keys
    sorted_keys = torch.sort(torch.unique(user * n_items + item)).values
    a = sample_negatives(user, n_items, 3, pairs, torch.Generator().manual_seed(4))
    b = sample_negatives(user, n_items, 3, sorted_keys, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_pair_set_picks_the_bitset_for_dense_logs_and_the_keys_for_huge_catalogues():
    user, item = torch.tensor([0, 5]), torch.tensor([3, 1])
    assert PairSet(user, item, 100).bits is not None
    huge = PairSet(torch.tensor([0, 3_000_000]), item, 10_000_000)  # 3e13 bits
    assert huge.bits is None and huge.keys is not None
    assert huge.contains(torch.tensor([3, 4])).tolist() == [True, False]


@pytest.mark.parametrize("optim", ["row_adagrad", "torch_sgd"])
def test_sparse_mf_learns_planted_taste_groups_beyond_popularity(optim, tmp_path):
    """Eager here (compiling is tested above and in the resume test); torch's SGD takes the
    sparse gradients too."""
    chosen = {
        "row_adagrad": ["optim=row_adagrad", "optim.lr=0.05", "optim.compile=false"],
        "torch_sgd": ["optim=row_adagrad", "~optim.eps", "~optim.initial_accumulator_value"]
        + ["~optim.compile", "~optim.fused", "optim._target_=torch.optim.SGD", "optim.lr=50"],
    }[optim]
    overrides = (
        TINY_DATA
        + FAST_TRAINER
        + [
            "model=mf",
            "model.sparse=true",
            "model.compile=false",
            *chosen,
            "optim.steps_per_call=4",
            "seed=3",
            "trainer.max_epochs=5",
        ]
    )
    m = train(compose_config("train", overrides, tmp_path))
    ours, pop = m["test"]["ndcg@10"], m["baseline"]["test"]["ndcg@10"]
    assert ours > 1.2 * pop, f"{optim}: ndcg@10 {ours:.4f} vs popularity {pop:.4f}"
