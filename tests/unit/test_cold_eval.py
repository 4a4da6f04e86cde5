"""Cold / warm item slices of the evaluation against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from recsys.data.datamodule import RecDataModule
from recsys.data.interactions import Interactions, Split
from recsys.models.base import Recommender
from recsys.training.module import RecModule
from recsys.training.results import format_table
from recsys.training.runs import evaluate

N_USERS, N_ITEMS = 9, 14
TOPK = [3, 5]


class FixedScores(Recommender):
    """Scores fixed at construction (a seeded table, no ties): the reference knows them."""

    train_batch = None

    def __init__(self, num_users: int, num_items: int):
        super().__init__(num_users, num_items)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("table", torch.rand(num_users, num_items, generator=g))

    def fit(self, train: Tensor) -> None:
        pass

    def score(self, users) -> Tensor:
        return self.table[users.user]


def inter(pairs: list[tuple[int, int]]) -> Interactions:
    u = np.array([p[0] for p in pairs], dtype=np.int64)
    i = np.array([p[1] for p in pairs], dtype=np.int64)
    return Interactions(
        u,
        i,
        np.arange(len(pairs), dtype=np.float64),
        None,
        np.arange(N_USERS),
        np.arange(N_ITEMS),
    )


# items 10, 11 validation-cold; 12, 13 test-cold; 0..9 warm
COLD = np.array([0] * 10 + [1, 1, 2, 2], dtype=np.int8)
TRAIN = [(u, (u + j) % 10) for u in range(N_USERS) for j in range(3)]
VAL = [(0, 5), (1, 10), (1, 6), (2, 11), (3, 10), (3, 11), (3, 7), (5, 9), (6, 10)]
TEST = [(0, 12), (0, 8), (1, 13), (2, 9), (3, 12), (3, 13), (4, 0), (4, 12), (7, 13), (8, 1)]


@pytest.fixture(scope="module")
def split() -> Split:
    s = Split(inter(TRAIN), inter(VAL), inter(TEST), name="cold_items", cold_items=COLD)
    assert not (COLD[s.train.item] > 0).any()  # the tiny split keeps the protocol's promises
    train_pairs = set(zip(s.train.user.tolist(), s.train.item.tolist(), strict=True))
    for part in (s.val, s.test):
        assert not set(zip(part.user.tolist(), part.item.tolist(), strict=True)) & train_pairs
    return s


def brute_force(split: Split, table: np.ndarray, stage: str) -> dict[str, dict[int, float]]:
    """Per user: recall and ndcg at each K for all targets and for the cold / warm ones, by a
    plain per-user loop over a numpy ranking."""
    history = split.train if stage == "val" else split.train.concat(split.val)
    target = split.val if stage == "val" else split.test
    out: dict[str, dict[int, float]] = {}
    for u in sorted(set(target.user.tolist())):
        s = table[u].astype(np.float64).copy()
        s[history.item[history.user == u]] = -np.inf
        ranking = np.argsort(-s, kind="stable")
        rel_all = set(target.item[target.user == u].tolist())
        for name, rel in (
            ("", rel_all),
            ("cold/", {i for i in rel_all if COLD[i]}),
            ("warm/", {i for i in rel_all if not COLD[i]}),
        ):
            if not rel:
                continue
            for k in TOPK:
                top = ranking[:k].tolist()
                hits = [1.0 if i in rel else 0.0 for i in top]
                dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
                idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(rel))))
                out.setdefault(f"{name}recall@{k}", {})[u] = sum(hits) / len(rel)
                out.setdefault(f"{name}ndcg@{k}", {})[u] = dcg / idcg
    return out


@pytest.mark.parametrize("stage", ["val", "test"])
def test_slices_equal_brute_force(split, stage):
    dm = RecDataModule({"name": "tiny", "split": "cold_items"}, eval_batch_size=4)
    dm.split = split  # served as prepared: no source is read
    module = RecModule(
        model={"_target_": f"{__name__}.FixedScores"},
        num_users=N_USERS,
        num_items=N_ITEMS,
        evaluation={"topk": TOPK, "metrics": ["recall", "ndcg"], "popularity_bias": False},
    )
    dm.configure_for(module.model)
    means, per_user = evaluate(module, dm, stage, "cpu")
    ref = brute_force(split, module.model.table.numpy(), stage)
    users = per_user["user"].tolist()
    for key, by_user in ref.items():
        got = dict(zip(users, per_user[key].tolist(), strict=True))
        for u in users:  # users without a target in the slice: NaN, not counted
            if u in by_user:
                assert got[u] == pytest.approx(by_user[u], abs=1e-6), (key, u)
            else:
                assert np.isnan(got[u]), (key, u)
        assert means[key] == pytest.approx(np.mean(list(by_user.values())), abs=1e-6), key
    for name in ("cold", "warm"):
        assert means[f"{name}/n_users"] == len(ref[f"{name}/recall@3"])
    # the tiny split exercises users with cold targets only, warm only and both
    cold_users, warm_users = set(ref["cold/recall@3"]), set(ref["warm/recall@3"])
    assert cold_users - warm_users and warm_users - cold_users and cold_users & warm_users


def test_slices_independent_of_chunking(split):
    results = []
    for chunk in (1, 3, 64):
        dm = RecDataModule({"name": "tiny"}, eval_batch_size=chunk)
        dm.split = split
        module = RecModule(
            model={"_target_": f"{__name__}.FixedScores"},
            num_users=N_USERS,
            num_items=N_ITEMS,
            evaluation={"topk": TOPK, "popularity_bias": False},
        )
        dm.configure_for(module.model)
        results.append(evaluate(module, dm, "test", "cpu")[0])
    assert results[0] == results[1] == results[2]


def test_no_slices_without_cold_items(split):
    from dataclasses import replace

    dm = RecDataModule({"name": "tiny"}, eval_batch_size=4)
    dm.split = replace(split, cold_items=None)
    module = RecModule(
        model={"_target_": f"{__name__}.FixedScores"},
        num_users=N_USERS,
        num_items=N_ITEMS,
        evaluation={"topk": TOPK},
    )
    dm.configure_for(module.model)
    means, per_user = evaluate(module, dm, "val", "cpu")
    assert not [k for k in [*means, *per_user] if "/" in k]


def test_set_cold_items_without_a_trainer(split):
    """``RecModule.evaluate`` (no trainer) slices once it is told the cold items."""
    dm = RecDataModule({"name": "tiny"}, eval_batch_size=4)
    dm.split = split
    module = RecModule(
        model={"_target_": f"{__name__}.FixedScores"},
        num_users=N_USERS,
        num_items=N_ITEMS,
        evaluation={"topk": TOPK, "metrics": ["recall"], "popularity_bias": False},
    )
    dm.configure_for(module.model)
    assert "cold/recall@3" not in module.evaluate(dm.test_dataloader())
    module.set_cold_items(COLD)
    per_user = module.evaluate(dm.test_dataloader())
    ref = brute_force(split, module.model.table.numpy(), "test")["cold/recall@3"]
    got = dict(zip(per_user["user"].tolist(), per_user["cold/recall@3"].tolist(), strict=True))
    assert {u: v for u, v in got.items() if not np.isnan(v)} == pytest.approx(ref)


def test_table_puts_slices_on_rows_of_their_own():
    text = format_table(
        {"test": {"ndcg@10": 0.5, "cold/n_users": 3, "cold/ndcg@10": 0.25, "warm/ndcg@10": 0.75}}
    )
    lines = text.splitlines()
    assert lines[0].split() == ["split", "n_users", "ndcg@10"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {"test": ["0.5000"], "test/cold": ["3", "0.2500"], "test/warm": ["0.7500"]}


def test_cold_slice_metrics_can_be_monitored_only_under_the_cold_items_split():
    """``eval.monitor=val/cold/ndcg@10`` is a metric the cold-items protocol reports (model
    selection on cold validation items); under another split it names nothing and is refused."""
    from recsys.errors import ConfigError
    from recsys.training.checks import validate_monitors

    evaluation = {"metrics": ["ndcg", "recall"], "topk": [10, 20], "monitor": "val/cold/ndcg@10"}
    validate_monitors({"eval": evaluation, "data": {"split": "cold_items"}})
    validate_monitors(
        {"eval": {**evaluation, "monitor": "val/warm/recall@20"}, "data": {"split": "cold_items"}}
    )
    with pytest.raises(ConfigError, match="is not a metric this run reports"):
        validate_monitors({"eval": evaluation, "data": {"split": "leave_one_out"}})
    with pytest.raises(ConfigError, match="is not a metric this run reports"):
        validate_monitors(
            {"eval": {**evaluation, "monitor": "val/cold/ndcg@5"}, "data": {"split": "cold_items"}}
        )
