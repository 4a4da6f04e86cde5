"""The strong-generalization split (``data.split=holdout_users``) against its definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.datamodule import RecDataModule
from recsys.data.interactions import Interactions
from recsys.data.splits import holdout_users, make_split
from recsys.errors import ConfigError
from tests.conftest import compose_config


def _log(n_users: int = 60, n_items: int = 40, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 25))
        for t, i in enumerate(rng.choice(n_items, size=n, replace=False)):
            rows.append((f"u{u}", 100 + int(i), float(t)))
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user", "item", "time"]))


def _pairs(inter: Interactions) -> set[tuple[str, int]]:
    """Events as external (user, item) ids, comparable across re-encoded item spaces."""
    return set(
        zip(inter.user_ids[inter.user].tolist(), inter.item_ids[inter.item].tolist(), strict=True)
    )


def test_users_disjoint_and_counts():
    inter = _log()
    s = holdout_users(inter, n_heldout_users=10, fold_in_ratio=0.8, seed=3)
    assert s.val_input is not None and s.test_input is not None
    train_u = set(np.unique(s.train.user).tolist())
    val_u = set(np.unique(np.concatenate([s.val.user, s.val_input.user])).tolist())
    test_u = set(np.unique(np.concatenate([s.test.user, s.test_input.user])).tolist())
    assert not train_u & val_u and not train_u & test_u and not val_u & test_u
    # exactly n_heldout_users each (every user of _log has >= 1 event, none loses all of them
    # here unless all their items are unseen in training, which this check would reveal)
    assert len(val_u) == 10 and len(test_u) == 10
    assert len(train_u) == 60 - 20


def test_fold_in_fraction_per_user_and_partition():
    inter = _log(seed=1)
    s = holdout_users(inter, n_heldout_users=12, fold_in_ratio=0.8, seed=0)
    for inputs, targets in ((s.val_input, s.val), (s.test_input, s.test)):
        n_in = np.bincount(inputs.user, minlength=inter.n_users)
        n_t = np.bincount(targets.user, minlength=inter.n_users)
        n = n_in + n_t
        for u in np.flatnonzero(n):
            expected = n[u] if n[u] == 1 else min(max(int(np.floor(0.8 * n[u])), 1), n[u] - 1)
            assert n_in[u] == expected, (u, n[u], n_in[u])
        # input and target of a user never share an item
        assert not _pairs(inputs) & _pairs(targets)
    # the five parts partition the kept events; dropped events are exactly those on items that
    # no training user has
    parts = [s.train, s.val, s.test, s.val_input, s.test_input]
    union = set().union(*(_pairs(p) for p in parts))
    assert sum(len(p) for p in parts) == len(union)
    train_items = set(s.train.item_ids[s.train.item].tolist())
    kept_expected = {(u, i) for u, i in _pairs(inter) if i in train_items}
    assert union == kept_expected
    # the catalogue is exactly the training items, re-encoded contiguously
    assert set(s.train.item_ids.tolist()) == train_items
    assert s.n_items == len(train_items)


def test_deterministic_and_seeded():
    inter = _log(seed=2)
    a = holdout_users(inter, 8, 0.5, seed=11)
    b = holdout_users(inter, 8, 0.5, seed=11)
    c = holdout_users(inter, 8, 0.5, seed=12)
    assert _pairs(a.val_input) == _pairs(b.val_input) and _pairs(a.test) == _pairs(b.test)
    assert _pairs(a.val) | _pairs(a.val_input) != _pairs(c.val) | _pairs(c.val_input)


def test_fold_in_items_are_random_not_first_in_time():
    # one held-out user per draw with 20 events: across seeds, the input should not always be
    # the 16 earliest events (the split is random per user, not temporal)
    inter = _log(n_users=30, seed=4)
    firsts = []
    for seed in range(6):
        s = holdout_users(inter, 1, 0.8, seed=seed)
        u = int(s.val_input.user[0])
        times = s.val_input.time
        targets_t = s.val.time[s.val.user == u]
        if len(targets_t):
            firsts.append(bool(times[s.val_input.user == u].max() < targets_t.min()))
    assert not all(firsts)


@pytest.mark.parametrize(
    ("n_heldout", "ratio", "match"),
    [
        (0, 0.8, "n_heldout_users"),
        (30, 0.8, "n_heldout_users"),
        (5, 1.0, "fold_in_ratio"),
        (5, 0.0, "fold_in_ratio"),
    ],
)
def test_bad_parameters_refused(n_heldout, ratio, match):
    with pytest.raises(ConfigError, match=match):
        make_split(
            _log(), "holdout_users", 0.1, 0.1, 0, n_heldout_users=n_heldout, fold_in_ratio=ratio
        )


def test_datamodule_serves_fold_in_history(tmp_path):
    cfg = compose_config(
        "train",
        [
            "data.n_users=200",
            "data.n_items=80",
            "data.split=holdout_users",
            "data.n_heldout_users=30",
        ],
        tmp_path,
    )
    dm = RecDataModule(dict(cfg.data), seed=5)
    s = dm.data
    assert dm.history("val") is s.val_input and dm.history("test") is s.test_input
    # evaluated users are exactly the held-out users with targets; none of them trains
    loader = dm._eval_loader("val")
    evaluated = set(loader.users.tolist())
    assert evaluated == set(np.unique(s.val.user).tolist())
    assert not evaluated & set(np.unique(s.train.user).tolist())
    # training rows hold only training users
    consumer = {
        "train_batch": "users",
        "num_negatives": 0,
        "max_len": None,
        "uses_context": lambda self: False,
    }
    dm.configure_for(type("M", (), consumer)())
    batch_users = set(dm.train_dataloader().active.tolist())
    assert batch_users == set(np.unique(s.train.user).tolist())
    summary = dm.summary()
    assert summary["n_val_input"] == len(s.val_input) and summary["n_test"] == len(s.test)


def test_recall_capped_is_hits_over_min_k_and_relevant():
    import torch

    from recsys.metrics.ranking import ranking_metrics, topk_hits

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(30, 25, generator=g)
    target = torch.rand(30, 25, generator=g) < 0.3
    target[:, 0] |= ~target.any(1)
    n_rel = target.sum(1)
    got = ranking_metrics(
        topk_hits(scores, target, 20), n_rel, [5, 20], ["recall_capped", "recall", "precision"]
    )
    order = torch.argsort(scores, 1, descending=True)
    for u in range(30):
        for k in (5, 20):
            hits = int(target[u, order[u, :k]].sum())
            assert got[f"recall_capped@{k}"][u].item() == pytest.approx(
                hits / min(k, int(n_rel[u]))
            )
            if n_rel[u] <= k:  # then it is Recall; with more relevant items than K, Precision
                assert got[f"recall_capped@{k}"][u] == pytest.approx(got[f"recall@{k}"][u].item())
            else:
                assert got[f"recall_capped@{k}"][u] == pytest.approx(
                    got[f"precision@{k}"][u].item()
                )


@pytest.mark.parametrize("k", [0, 3])
def test_fold_in_events_are_the_first_events_in_time_order(k):
    """Cold users: the input is each held-out user's first k events by time, every later event
    a target; k = 0 feeds no history at all (attributes alone)."""
    inter = _log()
    s = holdout_users(inter, n_heldout_users=10, fold_in_ratio=0.8, seed=3, fold_in_events=k)
    base = holdout_users(inter, n_heldout_users=10, fold_in_ratio=0.8, seed=3)
    assert _pairs(s.train) == _pairs(base.train)  # the same users hold out
    for targets, given in ((s.val, s.val_input), (s.test, s.test_input)):
        users = set(targets.user_ids[np.unique(np.concatenate([targets.user, given.user]))])
        for u in users:
            ev = [
                (t, i)
                for uu, i, t in zip(inter.user_ids[inter.user], inter.item, inter.time, strict=True)
                if uu == u
            ]
            ev = [inter.item_ids[i] for _, i in sorted(ev)]
            first = {(u, i) for i in ev[:k]}
            rest = {(u, i) for i in ev[k:]}
            assert {p for p in _pairs(given) if p[0] == u} == first
            kept = {
                p for p in rest if p[1] in set(s.train.item_ids.tolist())
            }  # catalogue: train items
            assert {p for p in _pairs(targets) if p[0] == u} == kept
    if k == 0:
        assert len(s.val_input) == 0 and len(s.test_input) == 0


def test_fold_in_events_refuses_a_negative_count():
    with pytest.raises(ConfigError, match="data.fold_in_events must be null or an integer >= 0"):
        holdout_users(_log(), n_heldout_users=10, fold_in_ratio=0.8, seed=3, fold_in_events=-1)
