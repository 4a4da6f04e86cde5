"""Preprocessing steps against hand-worked examples and brute force, and the leakage audit against
splits built to leak (or not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.audit import audit_split, describe, gini
from recsys.data.interactions import Interactions, Split
from recsys.data.preprocess import binarize, deduplicate, filter_history_length, kcore, preprocess
from recsys.data.splits import leave_one_out, random_split, temporal_split
from recsys.errors import DataError


def frame(rows, cols=("user", "item", "time", "rating")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(cols[: len(rows[0])]))


def test_binarize_keeps_ratings_at_or_above_threshold():
    df = frame([(1, 1, 0, 3.5), (1, 2, 1, 4.0), (2, 1, 2, 5.0)])
    assert binarize(df, 4.0)["item"].tolist() == [2, 1]
    assert len(binarize(df, None)) == 3
    with pytest.raises(DataError, match="needs a rating column"):
        binarize(df.drop(columns="rating"), 4.0)


def test_dedup_keeps_the_latest_and_breaks_ties_by_log_order():
    df = frame(
        [
            (1, 7, 30, 1.0),  # the latest (1, 7): kept
            (1, 7, 10, 2.0),
            (2, 7, 5, 3.0),  # tie at time 5 for (2, 7): the later line wins
            (2, 7, 5, 4.0),
            (2, 8, 1, 5.0),
        ]
    )
    out = deduplicate(df)
    assert out["rating"].tolist() == [1.0, 4.0, 5.0]  # original log order preserved
    no_time = df.drop(columns="time")
    assert deduplicate(no_time)["rating"].tolist() == [2.0, 4.0, 5.0]  # last in the log
    strings = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "x", "x"], "time": [2, 1, 0]})
    assert deduplicate(strings)["time"].tolist() == [2, 0]


def test_dedup_matches_brute_force():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "user": rng.integers(0, 30, 2000),
            "item": rng.integers(0, 20, 2000),
            "time": rng.integers(0, 50, 2000).astype(float),
        }
    )
    out = deduplicate(df)
    best: dict = {}
    for pos, (u, i, t) in enumerate(df[["user", "item", "time"]].itertuples(index=False)):
        if (u, i) not in best or t >= df["time"].iloc[best[(u, i)]]:
            best[(u, i)] = pos
    assert sorted(out.index.tolist()) == sorted(best.values())


def brute_kcore(pairs, k_user, k_item):
    pairs = list(pairs)
    while True:
        uc = pd.Series([u for u, _ in pairs]).value_counts()
        ic = pd.Series([i for _, i in pairs]).value_counts()
        kept = [(u, i) for u, i in pairs if uc[u] >= k_user and ic[i] >= k_item]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def test_kcore_iterates_until_stable():
    # item 3 has 1 event -> (2, 3) goes; user 2 is left with 1 -> (2, 2) goes; item 2 is left
    # with 1 -> (1, 2) goes; user 1 is left with 1 -> (1, 1) goes; the rest is a 2-core
    df = frame([(1, 1), (1, 2), (2, 2), (2, 3), (3, 1), (3, 4), (4, 4), (4, 1)], ("user", "item"))
    out = kcore(df, 2, 2)
    assert sorted(zip(out["user"], out["item"], strict=False)) == [(3, 1), (3, 4), (4, 1), (4, 4)]
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"user": rng.integers(0, 60, 600), "item": rng.integers(0, 40, 600)})
    out = kcore(df, 5, 8)
    assert sorted(zip(out["user"], out["item"], strict=False)) == sorted(
        brute_kcore(zip(df["user"], df["item"], strict=False), 5, 8)
    )
    assert out.groupby("user").size().min() >= 5 and out.groupby("item").size().min() >= 8


def test_history_length_filter():
    df = frame([(1, i) for i in range(3)] + [(2, i) for i in range(6)] + [(3, 1)], ("user", "item"))
    assert sorted(set(filter_history_length(df, 2, 5)["user"])) == [1]
    assert sorted(set(filter_history_length(df, 3, None)["user"])) == [1, 2]


def test_preprocess_names_the_emptying_step():
    df = frame([(1, 1, 0, 1.0), (2, 2, 0, 2.0)])
    with pytest.raises(DataError, match="no interactions left after history length filter"):
        preprocess(df, min_history=2, source="x")
    with pytest.raises(DataError, match="x: no interactions were loaded"):
        preprocess(df.iloc[:0], source="x")


# -- audit -----------------------------------------------------------------------------------------
def log_with_times() -> Interactions:
    rows = [(u, i, 10.0 * u + i) for u in range(6) for i in range(5) if (u + i) % 4]
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user", "item", "time"]))


def test_audit_of_a_temporal_split_is_leak_free():
    a = audit_split(temporal_split(log_with_times(), 0.2, 0.2))
    assert a["pair_overlap"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert a["temporal"]["must_be_zero"] and a["temporal"]["train_after_first_test"] == 0
    assert a["ok"]


def test_audit_of_leave_one_out_reports_cross_user_leakage():
    inter = log_with_times()
    split = leave_one_out(inter)
    a = audit_split(split)
    first_test = split.test.time.min()
    assert a["temporal"]["train_after_first_test"] == int((split.train.time > first_test).sum()) > 0
    assert not a["temporal"]["must_be_zero"] and a["ok"]  # reported, not failed


def test_audit_counts_overlap_and_cold_entities():
    inter = log_with_times()
    split = random_split(inter, 0.2, 0.2, seed=0)
    # plant a leak: the first test event also in train
    leaky_train = split.train.concat(split.test.select(np.array([0])))
    a = audit_split(Split(leaky_train, split.val, split.test, name="random"))
    assert a["pair_overlap"]["train_test"] == 1 and not a["ok"]
    # an item that occurs only in test is cold and outside the training vocabulary
    only_test_item = split.test.item[0]
    keep = split.train.item != only_test_item
    b = audit_split(
        Split(
            split.train.select(keep),
            split.val.select(split.val.item != only_test_item),
            split.test,
            name="random",
        )
    )
    assert b["test_items_not_in_train"] >= 1 and b["items_outside_train"] >= 1
    assert b["item_vocabulary"].startswith("full log") and b["popularity_statistics"] == "train"
    assert a["temporal"]["applicable"]


def test_describe_and_gini():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n - 1) / n for one holder
    x = np.array([1, 2, 3, 10])
    brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(brute)
    inter = log_with_times()
    split = leave_one_out(inter)
    d = describe(split)
    counts = np.bincount(inter.user)
    assert (d["users"], d["items"], d["interactions"]) == (6, 5, len(inter))
    assert d["density"] == pytest.approx(len(inter) / 30)
    assert (
        d["history_length"]["q50"] == np.median(counts)
        and d["history_length"]["q100"] == counts.max()
    )
    assert d["split_sizes"] == {
        "train": len(split.train),
        "val": len(split.val),
        "test": len(split.test),
    }


def test_audit_with_repeated_pairs_counts_identical_events_only():
    # user 0 consumes item 1 twice (positions 0 and 3): leave-one-out puts one copy in test
    df = pd.DataFrame(
        {
            "user": [0, 0, 0, 0, 1, 1, 1],
            "item": [1, 2, 3, 1, 2, 3, 4],
            "time": [0.0, 1, 2, 3, 0, 1, 2],
        }
    )
    split = leave_one_out(Interactions.from_frame(df))
    a = audit_split(split, repeats=True)
    assert (
        a["pair_overlap"]["train_test"] == 1 and a["event_overlap"]["train_test"] == 0 and a["ok"]
    )
    assert not audit_split(split)["ok"]  # with de-duplication promised, a shared pair is a leak
    same_event = split.train.concat(split.test.select(np.array([0])))
    b = audit_split(Split(same_event, split.val, split.test, name="leave_one_out"), repeats=True)
    assert b["event_overlap"]["train_test"] == 1 and not b["ok"]


def test_temporal_audit_needs_a_shared_clock():
    """Per-user sequence positions (one-line-per-user files) are not a clock across users."""
    user = np.repeat(np.arange(4), 5)
    pos = np.tile(np.arange(5, dtype=np.float64), 4)  # each user's 0..4: positions, no times
    inter = Interactions(
        user=user,
        item=np.arange(20) % 7,
        time=pos,
        rating=None,
        user_ids=np.arange(4),
        item_ids=np.arange(7),
    )
    assert not audit_split(leave_one_out(inter))["temporal"]["applicable"]
    timed = Interactions(
        user=user,
        item=np.arange(20) % 7,
        time=pos * 86_400.0 + user * 3_600.0,
        rating=None,
        user_ids=np.arange(4),
        item_ids=np.arange(7),
    )
    assert audit_split(leave_one_out(timed))["temporal"]["applicable"]
