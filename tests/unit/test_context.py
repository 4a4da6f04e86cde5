"""Event context codes (recsys.data.context): a hand-worked example, and hour and weekday against
Python's datetime over random timestamps."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from recsys.data.context import context_codes, interaction_context
from recsys.data.interactions import Interactions

DAY = 86400


def test_hand_worked_example():
    # user 7: five events given out of order; user 3: one event between them
    user = np.array([7, 3, 7, 7, 7, 7])
    time = np.array(
        [
            100 + 2**20,  # 1970-01-13 03:17:56 (Tue); gap 2**20 - 4 s: floor(log2) = 19 -> 22
            3 * DAY + 5 * 3600 + 1,  # 1970-01-04 05:00:01, a Sunday; user 3's first event
            100,  # 1970-01-01 00:01:40 (Thu): user 7's first event (before the tie below)
            100,  # the same second: gap 0 -> 2
            101,  # gap 1 s -> 3 + 0
            104,  # gap 3 s -> 3 + 1
        ]
    )
    codes = context_codes(user, time)
    assert codes.dtype == np.int64 and codes.shape == (6, 3)
    assert codes.tolist() == [
        [4, 2, 22],
        [6, 7, 1],
        [1, 4, 1],
        [1, 4, 2],
        [1, 4, 3],
        [1, 4, 4],
    ]
    assert context_codes(user, time, n_gap_buckets=10)[0, 2] == 10  # capped
    edges = context_codes(np.array([1, 2, 3, 4]), np.array([0, DAY - 1, 4 * DAY, -1]))
    # midnight Thursday, 23:59:59 Thursday, Monday 1970-01-05, 1969-12-31 23:59:59 (Wednesday)
    assert edges[:, :2].tolist() == [[1, 4], [24, 4], [1, 1], [24, 3]]


def test_hour_and_weekday_match_datetime():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2_000_000_000, size=500)
    codes = context_codes(np.zeros(500, dtype=np.int64), t)
    for k, seconds in enumerate(t.tolist()):
        d = datetime.fromtimestamp(seconds, tz=timezone.utc)
        assert codes[k, 0] == d.hour + 1 and codes[k, 1] == d.isoweekday()


def test_gaps_against_a_loop():
    rng = np.random.default_rng(1)
    user = rng.integers(0, 5, size=200)
    time = rng.integers(0, 10**6, size=200).astype(np.float64)
    codes = context_codes(user, time)
    for k in range(200):
        prior = [
            j
            for j in range(200)
            if user[j] == user[k] and (time[j], j) < (time[k], k)  # earlier, ties by position
        ]
        if not prior:
            assert codes[k, 2] == 1
            continue
        gap = time[k] - max(time[j] for j in prior)
        want = 2 if gap < 1 else min(3 + int(np.floor(np.log2(gap))), 32)
        assert codes[k, 2] == want


def test_logs_without_a_clock_have_no_context():
    ids = np.arange(3)
    positions = Interactions(
        user=np.array([0, 0, 1]),
        item=np.array([0, 1, 2]),
        time=np.array([0.0, 1.0, 0.0]),  # per-user sequence positions
        rating=None,
        user_ids=ids[:2],
        item_ids=ids,
    )
    assert interaction_context(positions) is None
    clock = Interactions(
        user=positions.user,
        item=positions.item,
        time=np.array([100.0, 4000.0, 50.0]),
        rating=None,
        user_ids=ids[:2],
        item_ids=ids,
    )
    assert interaction_context(clock)[:, 2].tolist() == [1, 3 + 11, 1]  # 3900 s: 2**11..2**12
    with pytest.raises(ValueError, match="finite"):
        context_codes(np.array([1]), np.array([np.nan]))
