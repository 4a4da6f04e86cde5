"""Splits against their definitions."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from recsys.data.interactions import Interactions, Split
from recsys.data.splits import leave_one_out, random_split, temporal_split
from recsys.data.synthetic import generate
from recsys.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def log() -> Interactions:
    df, _ = generate(n_users=200, n_items=80, n_groups=4, mean_length=15, seed=3)
    return Interactions.from_frame(df)


def keys(part: Interactions) -> set[tuple[int, int]]:
    return set(zip(part.user.tolist(), part.item.tolist(), strict=True))


def assert_partition(split: Split, inter: Interactions) -> None:
    tr, va, te = keys(split.train), keys(split.val), keys(split.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(split.train) + len(split.val) + len(split.test) == len(inter)
    assert tr | va | te == keys(inter)


def test_leave_one_out_definition(log):
    s = leave_one_out(log)
    assert_partition(s, log)
    for u in range(log.n_users):
        times = log.time[log.user == u]
        t_test = s.test.time[s.test.user == u]
        t_val = s.val.time[s.val.user == u]
        t_train = s.train.time[s.train.user == u]
        n = len(times)
        assert len(t_test) == (1 if n >= 2 else 0)
        assert len(t_val) == (1 if n >= 3 else 0)
        if len(t_test):  # test is the latest event, validation the one before, train precedes both
            assert t_test[0] == times.max()
            if len(t_val):
                assert t_val[0] <= t_test[0]
                assert (t_train <= t_val[0]).all()


def test_leave_one_out_ties_are_stable():
    df = pd.DataFrame({"user": [1, 1, 1], "item": [10, 11, 12], "time": [5.0, 5.0, 5.0]})
    s = leave_one_out(Interactions.from_frame(df))
    # equal times keep the log order: the last row is test, the one before validation
    assert s.test.item_ids[s.test.item].tolist() == [12]
    assert s.val.item_ids[s.val.item].tolist() == [11]


def test_random_split_counts_follow_recbole(log):
    s = random_split(log, 0.1, 0.1, seed=0)
    assert_partition(s, log)
    n = np.bincount(log.user, minlength=log.n_users)
    n_val = np.bincount(s.val.user, minlength=log.n_users)
    n_test = np.bincount(s.test.user, minlength=log.n_users)
    for u in range(log.n_users):
        expect_test = int(0.1 * n[u])
        expect_val = int(0.1 * n[u])
        if 0 < 0.1 * n[u] < 1 and n[u] - expect_val - expect_test > 1:
            expect_test += 1
        if 0 < 0.1 * n[u] < 1 and n[u] - expect_val - expect_test > 1:
            expect_val += 1
        assert n_test[u] == expect_test and n_val[u] == expect_val, u


def test_random_split_is_seeded(log):
    a, b, c = (random_split(log, 0.1, 0.1, seed=s) for s in (0, 0, 1))
    assert keys(a.test) == keys(b.test)
    assert keys(a.test) != keys(c.test)


def test_temporal_split_is_a_global_cutoff(log):
    s = temporal_split(log, 0.1, 0.2)
    assert_partition(s, log)
    assert s.train.time.max() <= s.val.time.min() <= s.val.time.max() <= s.test.time.min()
    assert len(s.test) == pytest.approx(0.2 * len(log), abs=5)


def test_time_splits_need_an_order():
    df = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1]})
    inter = Interactions.from_frame(df)
    with pytest.raises(DataError, match="data.split=leave_one_out needs an interaction order"):
        leave_one_out(inter)
    with pytest.raises(ConfigError, match="data.val_ratio"):
        random_split(inter, 1.5, 0.1, 0)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"split": "random", "val_ratio": 2.0}, "data.val_ratio must be in [0, 1), got 2.0"),
        ({"split": "temporal", "val_ratio": 0.6, "test_ratio": 0.5}, "must be < 1"),
        ({"split": "random", "test_ratio": "a lot"}, "data.test_ratio must be a number"),
        ({"split": "bogus"}, "data.split must be one of"),
        ({"split": "holdout_users"}, "data.n_heldout_users must be an integer >= 1"),
        ({"split": "holdout_users", "n_heldout_users": 5, "fold_in_ratio": 1}, "fold_in_ratio"),
        ({"min_user_interactions": -1}, "data.min_user_interactions must be an integer >= 0"),
        ({"max_history": 0}, "data.max_history must be an integer >= 1"),
        ({"split_seed": 1.5}, "data.split_seed must be an integer >= 0"),
    ],
)
def test_split_values_are_refused_before_any_file_is_read(override, message):
    """Split and preprocessing values that cannot work: one line naming the key, from the config
    alone (the source would read files; a path that does not exist shows it was never tried)."""
    from recsys.data.pipeline import check_config

    cfg = {"source": "recsys.data.synthetic.load", "path": "/nonexistent/log.csv", **override}
    with pytest.raises(ConfigError, match=re.escape(message) if "[" in message else message):
        check_config(cfg)
