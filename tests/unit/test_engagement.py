"""Engagement scoring: no leakage either way, beats recency on a planted churn signal, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.customer.engagement import (
    DAY,
    build_windows,
    features,
    fit_evaluate,
    labels,
    observed_users,
)
from recsys.data.interactions import Interactions
from recsys.errors import DataError
from tests.conftest import compose_config


def churn_log(n_users: int = 1500, days: float = 240.0, seed: int = 0) -> Interactions:
    """Users active throughout with a Poisson rate from 0.005 to 0.1 events/day (log-uniform).

    The planted signal beyond recency: P(event in the next 30 days) = 1 - exp(-30 * rate), and a
    single recency is a noisy estimate of the rate (exponential with mean 1 / rate), while the
    counts over the user's history estimate it far more precisely.
    """
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.uniform(np.log(0.005), np.log(0.1), n_users))
    start = rng.uniform(0, days * 0.3, n_users)
    rows_u, rows_t = [], []
    for u in range(n_users):
        n = rng.poisson(rate[u] * (days - start[u]))
        t = np.sort(np.r_[start[u], rng.uniform(start[u], days, n)])
        rows_u.append(np.full(len(t), u))
        rows_t.append(t * DAY)
    user, t = np.concatenate(rows_u), np.concatenate(rows_t)
    item = rng.integers(0, 50, len(user))
    df = pd.DataFrame({"user": user + 1, "item": item + 1, "time": np.floor(t)})
    return Interactions.from_frame(df)


def test_labels_and_features_hand_worked():
    # user 0: days 1, 5, 12; user 1: day 2; user 2: day 11 only (after the cutoff at day 10)
    df = pd.DataFrame(
        {
            "user": [1, 1, 1, 2, 3],
            "item": [1, 2, 1, 2, 1],
            "time": np.array([1, 5, 12, 2, 11]) * DAY,
        }
    )
    inter = Interactions.from_frame(df)
    users = observed_users(inter, 10 * DAY)
    assert users.tolist() == [0, 1]
    assert labels(inter, users, 10 * DAY, 7 * DAY).tolist() == [1, 0]
    assert labels(inter, users, 10 * DAY, 1 * DAY).tolist() == [0, 0]  # day 12 is outside (10, 11]
    x, names = features(inter, users, 10 * DAY)
    f = dict(zip(names, x[0], strict=False))
    assert f["log_recency_days"] == pytest.approx(np.log1p(5))
    assert f["log_frequency"] == pytest.approx(np.log1p(2))
    assert f["log_tenure_days"] == pytest.approx(np.log1p(4))
    assert f["log_events_7d"] == pytest.approx(np.log1p(1))  # day 5 only


def test_features_never_see_events_after_the_cutoff():
    inter = churn_log(300)
    cutoff = 150 * DAY
    users = observed_users(inter, cutoff)
    x, _ = features(inter, users, cutoff)
    # rewrite everything after the cutoff: other items, other times, more events
    after = inter.time > cutoff
    rng = np.random.default_rng(1)
    moved = Interactions(
        user=np.concatenate([inter.user, rng.integers(0, inter.n_users, 500)]),
        item=np.concatenate([np.where(after, (inter.item + 7) % inter.n_items, inter.item), rng.integers(0, inter.n_items, 500)]),
        time=np.concatenate([np.where(after, inter.time + rng.uniform(1, 9e6, len(inter)), inter.time), cutoff + rng.uniform(1, 9e6, 500)]),
        rating=None, user_ids=inter.user_ids, item_ids=inter.item_ids,
    )  # fmt: skip
    assert np.array_equal(observed_users(moved, cutoff), users)
    np.testing.assert_array_equal(features(moved, users, cutoff)[0], x)


def test_labels_never_see_events_before_the_cutoff():
    inter = churn_log(300)
    cutoff, horizon = 150 * DAY, 30 * DAY
    users = observed_users(inter, cutoff)
    y = labels(inter, users, cutoff, horizon)
    before = inter.time <= cutoff
    rng = np.random.default_rng(2)
    # shuffle the items and times of pre-cutoff events (keeping them before the cutoff)
    moved = Interactions(
        user=inter.user, item=np.where(before, rng.integers(0, inter.n_items, len(inter)), inter.item),
        time=np.where(before, inter.time.min() + rng.uniform(0, 1, len(inter)) * (cutoff - inter.time.min()), inter.time),
        rating=None, user_ids=inter.user_ids, item_ids=inter.item_ids,
    )  # fmt: skip
    np.testing.assert_array_equal(labels(moved, users, cutoff, horizon), y)
    # the training windows never use an event after the test cutoff
    w = build_windows(inter, {"horizon_days": 30, "train_windows": 3})
    assert w["audit"]["ok"] and w["audit"]["latest_time_used_in_training"] <= w["c_test"]
    assert (
        w["audit"]["earliest_test_label_time"]
        > w["c_test"]
        >= w["audit"]["latest_test_feature_time"]
    )


def test_beats_the_recency_baseline_on_a_planted_churn_signal():
    # logistic: fast, and the planted signal is monotone in the counts (gbdt: tested via the CLI)
    cfg = {"horizon_days": 30, "train_windows": 3, "classifier": "logistic"}
    res = fit_evaluate(churn_log(1500), cfg, seed=0)
    m, b = res["model"], res["baseline"]
    assert 0.05 < m["positive_rate"] < 0.95
    assert m["roc_auc"] > b["roc_auc"] + 0.04  # measured: 0.770 vs 0.685
    assert m["pr_auc"] > b["pr_auc"]
    assert m["log_loss"] < b["log_loss"]
    cal = res["calibration"]
    assert sum(c["n"] for c in cal) == m["n_users"]
    # calibrated on held-out data: the top decile is observed far more active than the bottom
    assert cal[-1]["observed_rate"] > cal[0]["observed_rate"] + 0.4


def test_cli_path_writes_metrics_and_scores(tmp_path):
    from recsys.customer.engagement import run

    cfg = compose_config(
        "engagement",
        [
            "data.n_users=400",
            "data.n_items=100",
            "horizon_days=20",
            "train_windows=2",
        ],
        tmp_path,
    )
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["task"] == "engagement" and saved["audit"]["ok"]
    assert set(saved["test"]) >= {"roc_auc", "pr_auc", "log_loss", "brier"}
    assert saved["baseline"]["name"] == "recency" and metrics["test"]["n_users"] > 0
    lines = (tmp_path / "engagement_scores.csv").read_text().splitlines()
    assert lines[0] == "user,p_active_next_horizon" and len(lines) == 401


def test_logs_without_a_clock_are_refused():
    from recsys.customer.engagement import check_clock

    seq = Interactions.from_frame(
        pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1], "time": [0.0, 1.0, 0.0]})
    )
    with pytest.raises(DataError, match="sequence position"):
        check_clock(seq, "beauty")
    with pytest.raises(DataError, match="no time column"):
        check_clock(Interactions.from_frame(pd.DataFrame({"user": [1], "item": [1]})), "x")


def test_frozen_representation_joins_features_only_when_it_predates_the_cutoffs():
    inter = churn_log(300)
    cfg = {"horizon_days": 30, "train_windows": 2}
    rep = np.random.default_rng(0).normal(size=(inter.n_users, 3))
    w = build_windows(inter, cfg)
    early = build_windows(inter, cfg, (rep, float(w["cutoffs"][0]), ["r0", "r1", "r2"]))
    assert early["names"][-3:] == ["r0", "r1", "r2"] and early["audit"]["ok"]
    np.testing.assert_array_equal(early["x_test"][:, -3:], rep[early["test_users"]])
    with pytest.raises(DataError, match="leak later behaviour"):
        build_windows(inter, cfg, (rep, float(w["cutoffs"][0]) + 1, ["r0", "r1", "r2"]))


# -- the event-index clock (task.horizon_interactions) ------------------------------------------
def in_row_order(inter: Interactions) -> Interactions:
    """The log as a source with ``data.rows_in_time_order=true`` gives it: rows in event order,
    ``time`` = row number (no timestamps)."""
    order = np.argsort(inter.time, kind="stable")
    return Interactions(
        user=inter.user[order], item=inter.item[order], time=np.arange(len(inter), dtype=float),
        rating=None, user_ids=inter.user_ids, item_ids=inter.item_ids,
    )  # fmt: skip


def test_event_clock_labels_and_features_hand_worked():
    from recsys.customer.engagement import (
        event_features,
        event_index,
        labels_events,
        observed_users_events,
    )

    # rows in event order: 0:u1 1:u2 2:u1 3:u3 | cutoff 4 | 4:u1 5:u4 | 6:u2
    df = pd.DataFrame({"user": [1, 2, 1, 3, 1, 4, 2], "item": [1, 2, 3, 1, 2, 1, 3]})
    inter = Interactions.from_frame(df.assign(time=np.arange(7.0)))
    clock = event_index(inter)
    assert clock.tolist() == list(range(7))
    users = observed_users_events(inter, clock, 4)
    assert users.tolist() == [0, 1, 2]  # u4's first event is at index 5
    assert labels_events(inter, clock, users, 4, 2).tolist() == [1, 0, 0]  # events 4, 5
    assert labels_events(inter, clock, users, 4, 3).tolist() == [1, 1, 0]  # events 4, 5, 6
    x, names = event_features(inter, clock, users, 4, 4)
    f = {name: x[:, j] for j, name in enumerate(names)}
    np.testing.assert_allclose(f["log_recency_events"], np.log1p([4 - 2, 4 - 1, 4 - 3]))
    np.testing.assert_allclose(f["log_frequency"], np.log1p([2, 1, 1]))
    np.testing.assert_allclose(f["log_tenure_events"], np.log1p([2, 0, 0]))
    np.testing.assert_allclose(f["log_events_last_h/4"], np.log1p([0, 0, 1]))  # event 3 only
    # ties in time: ordered by user id, then by position in the log
    tied = Interactions.from_frame(
        pd.DataFrame({"user": [2, 1, 1], "item": [1, 1, 2], "time": [5.0, 5.0, 3.0]})
    )
    assert event_index(tied).tolist() == [2, 1, 0]


def test_event_clock_features_never_see_events_at_or_after_the_cutoff():
    from recsys.customer.engagement import event_features, observed_users_events
    from recsys.data.interactions import event_index

    inter = in_row_order(churn_log(300))
    clock = event_index(inter)
    cutoff, horizon = len(inter) // 2, 400
    users = observed_users_events(inter, clock, cutoff)
    x, _ = event_features(inter, clock, users, cutoff, horizon)
    # rewrite everything from the cutoff on (other users and items) and append more events
    rng = np.random.default_rng(1)
    after = np.arange(len(inter)) >= cutoff
    extra = 700
    moved = Interactions(
        user=np.concatenate([np.where(after, rng.integers(0, inter.n_users, len(inter)), inter.user), rng.integers(0, inter.n_users, extra)]),
        item=np.concatenate([np.where(after, (inter.item + 7) % inter.n_items, inter.item), rng.integers(0, inter.n_items, extra)]),
        time=np.arange(len(inter) + extra, dtype=float),
        rating=None, user_ids=inter.user_ids, item_ids=inter.item_ids,
    )  # fmt: skip
    mclock = event_index(moved)
    assert np.array_equal(observed_users_events(moved, mclock, cutoff), users)
    np.testing.assert_array_equal(event_features(moved, mclock, users, cutoff, horizon)[0], x)


def test_event_clock_labels_never_see_events_before_the_cutoff():
    from recsys.customer.engagement import labels_events, observed_users_events
    from recsys.data.interactions import event_index

    inter = in_row_order(churn_log(300))
    clock = event_index(inter)
    cutoff, horizon = len(inter) // 2, 400
    users = observed_users_events(inter, clock, cutoff)
    y = labels_events(inter, clock, users, cutoff, horizon)
    # permute the pre-cutoff events among themselves and change their items
    rng = np.random.default_rng(2)
    perm = np.r_[rng.permutation(cutoff), np.arange(cutoff, len(inter))]
    items = np.where(
        np.arange(len(inter)) < cutoff, rng.integers(0, inter.n_items, len(inter)), inter.item
    )
    moved = Interactions(
        user=inter.user[perm], item=items[perm], time=inter.time, rating=None,
        user_ids=inter.user_ids, item_ids=inter.item_ids,
    )  # fmt: skip
    np.testing.assert_array_equal(
        labels_events(moved, event_index(moved), users, cutoff, horizon), y
    )
    # the training windows never use an event at or after the test cutoff
    w = build_windows(inter, {"horizon_interactions": 400, "train_windows": 3})
    a = w["audit"]
    assert a["ok"] and a["clock"] == "event_index"
    assert a["latest_index_used_in_training"] < w["c_test"] == len(inter) - 400
    assert a["latest_test_feature_index"] < w["c_test"] <= a["earliest_test_label_index"]
    assert [c for c in w["cutoffs"]] == [w["c_test"] - 1200, w["c_test"] - 800, w["c_test"] - 400]


def test_event_clock_beats_the_recency_baseline_on_a_planted_churn_signal():
    cfg = {"horizon_interactions": 1000, "train_windows": 3, "classifier": "logistic"}
    res = fit_evaluate(in_row_order(churn_log(1500)), cfg, seed=0)
    m, b = res["model"], res["baseline"]
    assert res["audit"]["ok"] and "log_recency_events" in res["features"]
    assert 0.05 < m["positive_rate"] < 0.95
    assert m["roc_auc"] > b["roc_auc"] + 0.04  # measured: 0.754 vs 0.667
    assert m["pr_auc"] > b["pr_auc"]
    assert m["log_loss"] < b["log_loss"]


def test_exactly_one_horizon():
    from recsys.customer.engagement import horizon_of
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="both set"):
        horizon_of({"horizon_days": 30, "horizon_interactions": 500})
    with pytest.raises(ConfigError, match="horizon_interactions must be an integer"):
        horizon_of({"horizon_interactions": 0})
    with pytest.raises(ConfigError, match="horizon_days must be > 0"):
        horizon_of({"horizon_days": -1})
    assert horizon_of({}) == ("days", 30 * DAY)
    assert horizon_of({"horizon_interactions": 500}) == ("events", 500.0)
    assert horizon_of({"horizon_days": 7}) == ("days", 7 * DAY)


def test_per_user_order_is_refused_in_either_clock():
    from recsys.customer.engagement import check_clock

    seq = Interactions.from_frame(
        pd.DataFrame({"user": [1, 1, 2, 2, 2], "item": [1, 2, 1, 3, 2], "time": [0.0, 1, 0, 1, 2]})
    )
    for mode in ("days", "events"):
        with pytest.raises(DataError, match="'amazon-beauty' orders events only by each user"):
            check_clock(seq, "amazon-beauty", mode)
    rows = Interactions.from_frame(
        pd.DataFrame({"user": [1, 2, 1], "item": [1, 1, 2], "time": [0.0, 1.0, 2.0]})
    )
    check_clock(rows, "log", "events", rows_in_time_order=True)
    with pytest.raises(DataError, match="counts events, not days"):
        check_clock(rows, "log", "days", rows_in_time_order=True)


def test_rows_in_time_order_csv_end_to_end(tmp_path):
    """A csv log without a time column, written in event order: the CLI path on the event clock;
    days are refused; a log that has a time column cannot also declare its row order."""
    from recsys.customer.engagement import run

    inter = churn_log(400, seed=3)
    order = np.argsort(inter.time, kind="stable")
    path = tmp_path / "log.csv"
    pd.DataFrame(
        {"user_id": inter.user_ids[inter.user[order]], "item_id": inter.item_ids[inter.item[order]]}
    ).to_csv(path, index=False)
    base = ["data=csv", f"data.path={path}", "data.dedup=false",
            f"data.cache_dir={tmp_path / 'cache'}", "data.rows_in_time_order=true"]  # fmt: skip
    metrics = run(
        compose_config("engagement", [*base, "horizon_interactions=300"], tmp_path / "ev")
    )
    a = metrics["audit"]
    assert a["ok"] and a["clock"] == "event_index" and a["n_events"] == len(inter)
    assert a["event_order"].startswith("row order")
    assert metrics["horizon"] == {"interactions": 300} and metrics["test"]["n_users"] > 0
    lines = (tmp_path / "ev" / "engagement_scores.csv").read_text().splitlines()
    assert len(lines) == 401
    with pytest.raises(DataError, match="counts events, not days"):
        run(compose_config("engagement", [*base, "horizon_days=30"], tmp_path / "days"))
    with pytest.raises(DataError, match="has a time column"):
        pd.DataFrame({"user_id": [1, 2, 1], "item_id": [1, 1, 2], "ts": [1, 2, 3]}).to_csv(
            tmp_path / "t.csv", index=False
        )
        run(compose_config("engagement", [*base[:2], f"data.path={tmp_path / 't.csv'}",
                                     "data.columns.time=ts", "data.rows_in_time_order=true",
                                     "horizon_interactions=1"], tmp_path / "t"))  # fmt: skip


@pytest.mark.data
def test_amazon_beauty_is_refused_from_the_cli_config(tmp_path):
    from tests.conftest import shared_datasets

    root = shared_datasets()
    if root is None or not (root / "beauty" / "Beauty.txt").is_file():
        pytest.skip("shared datasets (Beauty) not available")
    from recsys.customer.engagement import run

    cfg = compose_config(
        "engagement",
        [
            "data=amazon-beauty",
            f"data.root={root}",
            "horizon_interactions=1000",
        ],
        tmp_path,
    )
    with pytest.raises(DataError, match="'amazon-beauty' orders events only by each user"):
        run(cfg)


def test_row_order_clock_in_the_sources(tmp_path):
    """``data.rows_in_time_order``: atomic and csv logs without a time column get time = row
    number (parquet too); one-line-per-user files cannot declare it."""
    from recsys.data import sources

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.inter").write_text("user_id:token\titem_id:token\nb\tx\na\ty\nb\ty\n")
    cfg = {"name": "d", "root": str(tmp_path), "folder": "d", "files": ["d.inter"],
           "fields": {"user": "user_id", "item": "item_id", "time": "timestamp"}}  # fmt: skip
    assert "time" not in sources.load_atomic(cfg)
    df = sources.load_atomic({**cfg, "rows_in_time_order": True})
    assert df["time"].tolist() == [0.0, 1.0, 2.0] and df["user"].tolist() == ["b", "a", "b"]
    pd.DataFrame({"u": [3, 1, 3], "i": [7, 7, 8]}).to_parquet(tmp_path / "log.parquet")
    pq = {"path": str(tmp_path / "log.parquet"), "columns": {"user": "u", "item": "i"}}
    assert sources.load_csv({**pq, "rows_in_time_order": True})["time"].tolist() == [0, 1, 2]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "S.txt").write_text("1 5 6\n2 6 5\n")
    seq = {"name": "s", "root": str(tmp_path), "folder": "s", "files": ["S.txt"]}
    assert sources.load_user_sequences(seq)["time"].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="each line is one user's whole sequence"):
        sources.load_user_sequences({**seq, "rows_in_time_order": True})
