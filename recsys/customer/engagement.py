"""Engagement scoring: the probability that a user interacts again within a horizon.

    recsys-engagement data=ml-100k                              # 30 days
    recsys-engagement data=ml-latest-small horizon_days=60
    recsys-engagement data=ml-100k horizon_interactions=5000
    recsys-engagement data=csv data.path=log.csv data.rows_in_time_order=true \
        horizon_interactions=2000                                     # no time column

Data: the dataset's preprocessed log from the same pipeline as every run (same preprocessing,
same opt-out; the union of the split's parts). It needs a clock shared by all users; logs whose
only order is each user's sequence position (the one-line-per-user Amazon files) are refused.

Two clocks, one horizon each (set exactly one of ``horizon_days`` and
``horizon_interactions``; neither: 30 days):

- **days** (``horizon_days``, needs timestamps). At a cutoff ``c`` the users are those with an
  event at or before ``c``; features use only events with ``time <= c``; the label is 1 when the
  user has an event with ``c < time <= c + horizon``.
- **events** (``horizon_interactions = H``). The clock is the global event order: every event of
  the log gets its index ``0..N-1``, ordered by time (ties: user id, then position in the log) on
  logs with timestamps, or by row on logs whose rows are written in event order across users
  (``data.rows_in_time_order=true``, :mod:`recsys.data.sources`). A cutoff ``k`` is an event
  index: the users are those with an event of index ``< k``, features use only events with
  index ``< k`` (recency, tenure and gaps counted in events), and the label is 1 when the user
  has one of the next ``H`` events of the log (index in ``[k, k + H)``).

The test cutoff is ``last - horizon`` (or ``cutoff``, a timestamp or an event index); the
model is trained on ``train_windows`` earlier cutoffs ``c_test - j * horizon`` (j = 1..n),
whose label windows all end at or before ``c_test``, so no event after ``c_test`` is used in
training and every test label lies strictly after every feature. The audit in ``metrics.json``
reports these bounds as measured on the arrays, in the run's clock.

Features (:func:`features`, :func:`event_features`): log recency, log frequency, tenure, event
counts in the last 7/30/90 days (events: in the last H/4, H and 3H events of the log), active
days (days only), mean gap, mean item popularity at the cutoff and, with ratings, the mean
rating. The classifier is scikit-learn's gradient-boosted trees (``classifier=gbdt``) or a
logistic regression (``logistic``) on standardized features, seeded. The baseline is the
recency-only model: a logistic regression on log recency (a user active recently is likely to
come back).

Evaluation on the test window: ROC-AUC, PR-AUC (average precision), log-loss, Brier score and a
calibration table (deciles of the predicted probability: mean prediction vs observed rate).
Scores for the future (cutoff = the last event, no label yet) go to ``engagement_scores.csv``.
"""

from __future__ import annotations

import csv
import logging
import time as _time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.interactions import Interactions, event_index, has_clock
from recsys.errors import ConfigError, DataError

log = logging.getLogger("recsys")
DAY = 86_400.0
CLASSIFIERS = ("gbdt", "logistic")


# -- windows, features, labels (pure functions) -------------------------------------------------
def full_log(split: Any) -> Interactions:
    """Every event of a prepared split (train, validation, test and fold-in parts)."""
    inter = split.train
    for name in ("val", "test", "val_input", "test_input"):
        part = getattr(split, name, None)
        if part is not None and len(part):
            inter = inter.concat(part)
    return inter


def observed_users(inter: Interactions, cutoff: float) -> np.ndarray:
    """Internal ids of users with at least one event at or before ``cutoff`` (sorted)."""
    return np.unique(inter.user[inter.time <= cutoff])


def labels(inter: Interactions, users: np.ndarray, cutoff: float, horizon: float) -> np.ndarray:
    """(n,) 1 where the user has an event in ``(cutoff, cutoff + horizon]``, else 0."""
    m = (inter.time > cutoff) & (inter.time <= cutoff + horizon)
    active = np.zeros(inter.n_users, dtype=bool)
    active[inter.user[m]] = True
    return active[users].astype(np.int64)


FEATURES = (
    "log_recency_days", "log_frequency", "log_tenure_days", "log_events_7d", "log_events_30d",
    "log_events_90d", "log_active_days", "log_mean_gap_days", "mean_log_item_popularity",
)  # fmt: skip


def features(inter: Interactions, users: np.ndarray, cutoff: float) -> tuple[np.ndarray, list[str]]:
    """(n, f) features of ``users`` from events with ``time <= cutoff`` only, and their names."""
    past = inter.select(inter.time <= cutoff)
    recent = [past.time > cutoff - days * DAY for days in (7, 30, 90)]
    day = np.floor(past.time / DAY).astype(np.int64)
    day_keys = np.unique(past.user * (int(day.max(initial=0)) + 1) + day)  # distinct (user, day)
    active_days = np.bincount(day_keys // (int(day.max(initial=0)) + 1), minlength=inter.n_users)
    return _activity_features(
        inter, past, past.time, cutoff, DAY, recent, [np.log1p(active_days)], users, FEATURES
    )


def _activity_features(
    inter: Interactions,
    past: Interactions,
    t: np.ndarray,
    cutoff: float,
    unit: float,
    recent: list[np.ndarray],
    extra: list[np.ndarray],
    users: np.ndarray,
    names: tuple[str, ...],
) -> tuple[np.ndarray, list[str]]:
    """The columns both clocks share, from the events ``past`` (times ``t``, all before
    ``cutoff``; recency and tenure divided by ``unit``): log recency, frequency and tenure, the
    counts of each ``recent`` mask, the ``extra`` columns, log mean gap, mean item popularity
    and, with ratings, the mean rating; rows of ``users``."""
    n = inter.n_users
    count = np.bincount(past.user, minlength=n).astype(np.float64)
    last = np.full(n, -np.inf)
    first = np.full(n, np.inf)
    np.maximum.at(last, past.user, t)
    np.minimum.at(first, past.user, t)
    seen = count > 0  # users without a past get zeros (they are not scored anyway)
    recency = np.where(seen, (cutoff - np.where(seen, last, cutoff)) / unit, 0.0)
    tenure = np.where(seen, np.where(seen, last, 0.0) - np.where(seen, first, 0.0), 0.0) / unit
    cols = [np.log1p(recency), np.log1p(count), np.log1p(tenure)]
    cols += [np.log1p(np.bincount(past.user[m], minlength=n)) for m in recent] + extra
    cols.append(np.log1p(tenure / np.maximum(count - 1, 1)))
    pop = np.log1p(np.bincount(past.item, minlength=inter.n_items).astype(np.float64))
    cols.append(np.bincount(past.user, weights=pop[past.item], minlength=n) / np.maximum(count, 1))
    names = list(names)
    if past.rating is not None:
        total = np.bincount(past.user, weights=past.rating.astype(np.float64), minlength=n)
        cols.append(total / np.maximum(count, 1))
        names.append("mean_rating")
    x = np.stack(cols, 1)[users]
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), names


def recency_feature(x: np.ndarray, names: list[str]) -> np.ndarray:
    name = "log_recency_days" if "log_recency_days" in names else "log_recency_events"
    return x[:, [names.index(name)]]


# -- the event-index clock (horizon_interactions) ------------------------------------------
def observed_users_events(inter: Interactions, clock: np.ndarray, cutoff: int) -> np.ndarray:
    """Internal ids of users with at least one event of index ``< cutoff`` (sorted)."""
    return np.unique(inter.user[clock < cutoff])


def labels_events(
    inter: Interactions, clock: np.ndarray, users: np.ndarray, cutoff: int, horizon: int
) -> np.ndarray:
    """(n,) 1 where the user has one of the ``horizon`` events from index ``cutoff`` on (index
    in ``[cutoff, cutoff + horizon)``), else 0."""
    m = (clock >= cutoff) & (clock < cutoff + horizon)
    active = np.zeros(inter.n_users, dtype=bool)
    active[inter.user[m]] = True
    return active[users].astype(np.int64)


def event_windows(horizon: int) -> tuple[int, int, int]:
    """Lengths (in events) of the recent-activity counts: H/4, H and 3H (the days clock's
    7/30/90 days for a 30-day horizon)."""
    return max(1, horizon // 4), horizon, 3 * horizon


EVENT_FEATURES = (
    "log_recency_events", "log_frequency", "log_tenure_events", "log_events_last_h/4",
    "log_events_last_h", "log_events_last_3h", "log_mean_gap_events", "mean_log_item_popularity",
)  # fmt: skip


def event_features(
    inter: Interactions, clock: np.ndarray, users: np.ndarray, cutoff: int, horizon: int
) -> tuple[np.ndarray, list[str]]:
    """(n, f) features of ``users`` from the events of index ``< cutoff`` only, with recency,
    tenure, gaps and recent windows counted in events of the whole log, and their names."""
    m = clock < cutoff
    past, pc = inter.select(m), clock[m].astype(np.float64)
    recent = [pc >= cutoff - w for w in event_windows(horizon)]
    return _activity_features(inter, past, pc, cutoff, 1.0, recent, [], users, EVENT_FEATURES)


DEFAULT_HORIZON_DAYS = 30.0


def horizon_of(cfg: Mapping[str, Any]) -> tuple[str, float]:
    """``("days", seconds)`` or ``("events", H)`` from ``horizon_days`` /
    ``horizon_interactions`` (exactly one may be set; neither: 30 days)."""
    days, events = cfg.get("horizon_days"), cfg.get("horizon_interactions")
    if days is not None and events is not None:
        raise ConfigError(
            f"horizon_days={days} and horizon_interactions={events} are both set; set "
            "exactly one (days need timestamps; interactions count the next events of the log) "
            "and the other to null"
        )
    if events is not None:
        if isinstance(events, bool) or not isinstance(events, int) or events < 1:
            raise ConfigError(
                f"horizon_interactions must be an integer >= 1 (events), got {events!r}"
            )
        return "events", float(events)
    days = DEFAULT_HORIZON_DAYS if days is None else days
    if isinstance(days, bool) or not isinstance(days, int | float) or days <= 0:
        raise ConfigError(f"horizon_days must be > 0, got {days!r}")
    return "days", float(days) * DAY


# -- models and metrics -------------------------------------------------------------------------
def make_classifier(kind: str, seed: int):
    if kind == "gbdt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=20,
            l2_regularization=1.0, random_state=seed,
        )  # fmt: skip
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    raise ConfigError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {kind!r}")


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    p = np.clip(p, 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(y.mean()),
        "n_users": int(len(y)),
    }


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Deciles of the predicted probability: users, mean prediction, observed rate per bin."""
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append(
                {
                    "n": int(len(chunk)),
                    "mean_predicted": float(p[chunk].mean()),
                    "observed_rate": float(y[chunk].mean()),
                }
            )
    return out


# -- the task -----------------------------------------------------------------------------------
def check_clock(
    inter: Interactions, name: str, mode: str = "days", rows_in_time_order: bool = False
) -> None:
    """Refuse logs that have no clock for the horizon's mode (see the module docstring)."""
    rows = (
        "a log whose rows are written in event order across users (data=csv or data=atomic "
        "with data.rows_in_time_order=true, then horizon_interactions=<events>)"
    )
    if inter.time is None:
        raise DataError(
            f"recsys-engagement: dataset {name!r} has no time column and no declared row order, "
            "so there is no cutoff shared by all users; it becomes possible with timestamps "
            f"(horizon_days or horizon_interactions) or with {rows}"
        )
    if not has_clock(inter):
        raise DataError(
            f"recsys-engagement: dataset {name!r} orders events only by each user's own sequence "
            "position (one line per user, no timestamps), so there is no clock shared by all "
            "users and no cutoff that is the same for every user, in days or in interactions; "
            "it becomes possible with the events' timestamps (e.g. the raw log with its times, "
            f"loaded with data=csv data.columns.time=<column> or data=atomic) or with {rows}"
        )
    if mode == "days" and rows_in_time_order:
        raise DataError(
            f"recsys-engagement: dataset {name!r} has no timestamps: its clock is the row order "
            "(data.rows_in_time_order=true), which counts events, not days; set "
            "horizon_interactions=<events> instead of horizon_days"
        )


def build_windows(
    inter: Interactions,
    cfg: Mapping[str, Any],
    extra: tuple[np.ndarray, float, list[str]] | None = None,
) -> dict[str, Any]:
    """The training and test windows of the task config: cutoffs, users, features, labels.

    ``extra``: (per-user feature rows over ``inter``'s user ids, the latest event time they were
    computed from, their names), e.g. a frozen recommender's user representation; refused when
    that time is after the first cutoff (the features would see the future of that window)."""
    mode, horizon = horizon_of(cfg)
    n_train = int(cfg.get("train_windows", 3))
    if n_train < 1:
        raise ConfigError(f"train_windows must be >= 1, got {n_train}")
    if mode == "events":
        return _build_event_windows(inter, cfg, int(horizon), n_train, extra)
    t_min, t_max = float(inter.time.min()), float(inter.time.max())
    c_test = float(cfg["cutoff"]) if cfg.get("cutoff") is not None else t_max - horizon
    cutoffs = [c_test - j * horizon for j in range(n_train, 0, -1)]
    if cutoffs[0] <= t_min:
        raise DataError(
            f"recsys-engagement: the log spans {(t_max - t_min) / DAY:.0f} days, too short for "
            f"{n_train} training window(s) and a test window of {horizon / DAY:g} days each; "
            "lower horizon_days or train_windows"
        )
    if extra is not None and extra[1] > cutoffs[0]:
        raise DataError(
            f"representation_run: the recommender was trained on events up to {extra[1]:.0f}, "
            f"after the first engagement cutoff {cutoffs[0]:.0f}: its representation would leak "
            "later behaviour into the features; train it with data.split=temporal and larger "
            "val_ratio/test_ratio so its training data ends before that cutoff"
        )

    def feats(users: np.ndarray, c: float) -> tuple[np.ndarray, list[str]]:
        x, names = features(inter, users, c)
        if extra is None:
            return x, names
        return np.concatenate([x, extra[0][users]], 1), names + extra[2]

    xs, ys, audit_train = [], [], []
    names: list[str] = []
    for c in cutoffs:
        users = observed_users(inter, c)
        x, names = feats(users, c)
        xs.append(x)
        ys.append(labels(inter, users, c, horizon))
        audit_train.append({"cutoff": c, "users": int(len(users)), "label_end": c + horizon})
    test_users = observed_users(inter, c_test)
    x_test, _ = feats(test_users, c_test)
    y_test = labels(inter, test_users, c_test, horizon)
    # leakage audit, measured on the events each part used
    feat_max = float(inter.time[inter.time <= c_test].max())
    label_events = inter.time[(inter.time > c_test) & (inter.time <= c_test + horizon)]
    audit = {
        "clock": "time",
        "test_cutoff": c_test,
        "horizon_days": horizon / DAY,
        "train_windows": audit_train,
        "latest_time_used_in_training": max(w["label_end"] for w in audit_train),
        "latest_test_feature_time": feat_max,
        "earliest_test_label_time": float(label_events.min()) if len(label_events) else None,
        "features_rule": "time <= cutoff",
        "representation_latest_time": None if extra is None else extra[1],
        "labels_rule": "cutoff < time <= cutoff + horizon",
    }
    audit["ok"] = bool(
        (extra is None or extra[1] <= cutoffs[0])
        and audit["latest_time_used_in_training"] <= c_test
        and feat_max <= c_test
        and (
            audit["earliest_test_label_time"] is None or audit["earliest_test_label_time"] > c_test
        )
    )
    return {
        "mode": "days",
        "names": names,
        "x_train": np.concatenate(xs),
        "y_train": np.concatenate(ys),
        "x_test": x_test,
        "y_test": y_test,
        "test_users": test_users,
        "cutoffs": cutoffs,
        "c_test": c_test,
        "horizon": horizon,
        "audit": audit,
    }


def _build_event_windows(
    inter: Interactions,
    cfg: Mapping[str, Any],
    horizon: int,
    n_train: int,
    extra: tuple[np.ndarray, float, list[str]] | None,
) -> dict[str, Any]:
    """:func:`build_windows` on the event-index clock (``horizon_interactions``)."""
    clock = event_index(inter)
    n = len(inter)
    c_test = int(cfg["cutoff"]) if cfg.get("cutoff") is not None else n - horizon
    if not 0 < c_test <= n - horizon:
        raise DataError(
            f"cutoff={c_test}: on the event clock the test cutoff is an event index in "
            f"[1, {n - horizon}] (the log has {n} events, the horizon is {horizon})"
        )
    cutoffs = [c_test - j * horizon for j in range(n_train, 0, -1)]
    if cutoffs[0] < 1:
        raise DataError(
            f"recsys-engagement: the log has {n} events, too few for {n_train} training window(s) "
            f"and a test window of {horizon} events each after at least one past event; lower "
            "horizon_interactions or train_windows"
        )
    rep_index = None
    if extra is not None:
        # the representation saw at most the events with time <= its latest time (ties included)
        rep_index = int(np.searchsorted(np.sort(inter.time), extra[1], side="right"))
        if rep_index > cutoffs[0]:
            raise DataError(
                f"representation_run: the recommender was trained on the first {rep_index} "
                f"events of the log, after the first engagement cutoff (event {cutoffs[0]}): its "
                "representation would leak later behaviour into the features; train it with "
                "data.split=temporal and larger val_ratio/test_ratio so its training data ends "
                "before that cutoff"
            )

    def feats(users: np.ndarray, c: int) -> tuple[np.ndarray, list[str]]:
        x, names = event_features(inter, clock, users, c, horizon)
        if extra is None:
            return x, names
        return np.concatenate([x, extra[0][users]], 1), names + extra[2]

    xs, ys, audit_train = [], [], []
    names: list[str] = []
    for c in cutoffs:
        users = observed_users_events(inter, clock, c)
        x, names = feats(users, c)
        xs.append(x)
        ys.append(labels_events(inter, clock, users, c, horizon))
        audit_train.append({"cutoff": c, "users": int(len(users)), "label_end": c + horizon - 1})
    test_users = observed_users_events(inter, clock, c_test)
    x_test, _ = feats(test_users, c_test)
    y_test = labels_events(inter, clock, test_users, c_test, horizon)
    label_idx = clock[(clock >= c_test) & (clock < c_test + horizon)]
    audit = {
        "clock": "event_index",
        "event_order": "time, ties by user id, then log position",
        "n_events": n,
        "test_cutoff": c_test,
        "horizon_interactions": horizon,
        "train_windows": audit_train,
        "latest_index_used_in_training": max(w["label_end"] for w in audit_train),
        "latest_test_feature_index": int(clock[clock < c_test].max()),
        "earliest_test_label_index": int(label_idx.min()) if len(label_idx) else None,
        "features_rule": "event_index < cutoff",
        "labels_rule": "cutoff <= event_index < cutoff + horizon",
        "representation_latest_index": None if rep_index is None else rep_index - 1,
    }
    audit["ok"] = bool(
        (rep_index is None or rep_index <= cutoffs[0])
        and audit["latest_index_used_in_training"] < c_test
        and audit["latest_test_feature_index"] < c_test
        and (
            audit["earliest_test_label_index"] is None
            or audit["earliest_test_label_index"] >= c_test
        )
    )
    return {
        "mode": "events",
        "clock": clock,
        "names": names,
        "x_train": np.concatenate(xs),
        "y_train": np.concatenate(ys),
        "x_test": x_test,
        "y_test": y_test,
        "test_users": test_users,
        "cutoffs": cutoffs,
        "c_test": c_test,
        "horizon": horizon,
        "audit": audit,
    }


def fit_evaluate(
    inter: Interactions,
    cfg: Mapping[str, Any],
    seed: int = 0,
    extra: tuple[np.ndarray, float, list[str]] | None = None,
) -> dict[str, Any]:
    """Train the classifier and the recency baseline on the training windows; test both."""
    from threadpoolctl import threadpool_limits

    w = build_windows(inter, cfg, extra)
    y_train, y_test = w["y_train"], w["y_test"]
    if len(np.unique(y_train)) < 2:
        raise DataError("recsys-engagement: the training windows hold only one label class")
    # threads (default 1): these fits are small, and OpenMP oversubscription on a shared
    # machine made them ~10x slower than one thread in our measurements
    with threadpool_limits(limits=int(cfg.get("threads") or 1)):
        clf = make_classifier(str(cfg.get("classifier", "gbdt")), seed).fit(w["x_train"], y_train)
        base = make_classifier("logistic", seed).fit(
            recency_feature(w["x_train"], w["names"]), y_train
        )
        p = clf.predict_proba(w["x_test"])[:, 1]
        p_base = base.predict_proba(recency_feature(w["x_test"], w["names"]))[:, 1]
    return {
        "model": scores(y_test, p),
        "baseline": scores(y_test, p_base),
        "calibration": calibration(y_test, p),
        "baseline_calibration": calibration(y_test, p_base),
        "features": w["names"],
        "train_examples": int(len(y_train)),
        "train_positive_rate": float(y_train.mean()),
        "audit": w["audit"],
        "_clf": clf,
        "_windows": w,
    }


def frozen_representation(
    run_dir: str,
    inter: Interactions,
    trust: list[str] | None = None,
    allow_unfinished: bool = False,
) -> tuple[np.ndarray, float, list[str]]:
    """A trained run's ``user_representation`` of ``inter``'s users (matched by external id;
    zeros for users the run does not know), and the latest event time the run trained on.
    ``trust`` and ``allow_unfinished``: as :func:`~recsys.training.runs.open_run`."""
    from recsys.customer.segments import representation
    from recsys.training.runs import open_run

    opened = open_run(
        run_dir, key="representation_run", trust=trust, allow_unfinished=allow_unfinished
    )
    model, split = opened.module.model, opened.datamodule.data
    seen = split.train  # the model's parameters were fitted on the training part
    if seen.time is None:
        raise DataError("representation_run: the run's data has no timestamps")
    rep = representation(model, seen)  # (run users, d)
    index = {str(u): i for i, u in enumerate(split.train.user_ids.tolist())}
    rows = np.array([index.get(str(u), -1) for u in inter.user_ids.tolist()])
    out = np.where(rows[:, None] >= 0, rep[np.maximum(rows, 0)], 0.0)
    return out, float(seen.time.max()), [f"rep_{j}" for j in range(rep.shape[1])]


def run(cfg) -> dict[str, Any]:
    """``recsys-engagement``: fit, evaluate, write metrics.json and the scores file."""
    from omegaconf import OmegaConf

    from recsys.data.pipeline import fingerprint, prepare
    from recsys.files import write_json
    from recsys.training.manifest import (
        end_manifest,
        interruptible,
        recording_end,
        start_manifest,
    )
    from recsys.training.results import format_table

    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    task, data_cfg = config, config["data"]  # the engagement settings are top-level keys
    out_dir = Path(config["paths"]["output_dir"])
    mode, horizon = horizon_of(task)  # a conflicting config fails before the data is read
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = start_manifest(out_dir, config, fingerprint(data_cfg), "cpu")
    # the end is recorded: finished, failed (the one-line reason) or interrupted (SIGINT/SIGTERM)
    unfinished = ("metrics.json", "engagement_scores.csv")
    with interruptible(), recording_end(out_dir, manifest, unfinished):
        t0 = _time.perf_counter()
        split = prepare(data_cfg, int(config["seed"]))
        inter = full_log(split)
        rows_in_time_order = bool(data_cfg.get("rows_in_time_order"))
        check_clock(inter, str(data_cfg.get("name")), mode, rows_in_time_order)
        extra = (
            frozen_representation(
                task["representation_run"],
                inter,
                task.get("trust") or [],
                bool(task.get("allow_unfinished")),
            )
            if task.get("representation_run")
            else None
        )
        result = fit_evaluate(inter, task, int(config["seed"]), extra)
        clf, _w = result.pop("_clf"), result.pop("_windows")

        if mode == "events" and rows_in_time_order:
            result["audit"]["event_order"] = (
                "row order of the source (data.rows_in_time_order=true)"
            )
        # scores for the future: cutoff after the last event, every user with a past
        if mode == "events":
            now = float(len(inter))
            users = observed_users_events(inter, _w["clock"], len(inter))
            x_now, _ = event_features(inter, _w["clock"], users, len(inter), int(horizon))
        else:
            now = float(inter.time.max())
            users = observed_users(inter, now)
            x_now, _ = features(inter, users, now)
        if extra is not None:
            x_now = np.concatenate([x_now, extra[0][users]], 1)
        p_now = clf.predict_proba(x_now)[:, 1]
        with open(out_dir / "engagement_scores.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["user", "p_active_next_horizon"])
            for u, pr in zip(split.train.user_ids[users].tolist(), p_now.tolist(), strict=False):
                wr.writerow([u, f"{pr:.6f}"])
        metrics = {
            "task": "engagement",
            "classifier": task.get("classifier", "gbdt"),
            "test": result["model"],
            "baseline": {"name": "recency", "test": result["baseline"]},
            **{k: v for k, v in result.items() if k not in ("model", "baseline")},
            "scores_cutoff": now,  # a timestamp, or (event clock) the number of events: all seen
            "horizon": {"days": horizon / DAY}
            if mode == "days"
            else {"interactions": int(horizon)},
            "data": {
                "name": data_cfg.get("name"),
                "fingerprint": fingerprint(data_cfg),
                "opt_out": (split.audit or {}).get("opt_out"),
            },
            "timing": {"fit_eval_s": round(_time.perf_counter() - t0, 3)},
        }
        write_json(out_dir / "metrics.json", metrics)
        end_manifest(out_dir, manifest)
    rows = {
        k: {m: v for m, v in r.items() if m != "n_users"}
        for k, r in (("model", result["model"]), ("recency baseline", result["baseline"]))
    }
    print(
        f"\n{format_table(rows)}\n\nleakage audit ok: {result['audit']['ok']}\nrun directory: {out_dir}",
        flush=True,
    )
    return metrics
