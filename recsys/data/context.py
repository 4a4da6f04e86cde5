"""Context of each event from its timestamp: hour of day, day of week and the gap since the
user's previous event, as small integer codes a model embeds like attributes.

Only logs with a clock shared by all users have a context (:func:`~recsys.data.interactions.
has_clock`): a sequence position (the S3-Rec files) has no hour, and a row number
(``data.rows_in_time_order``) is no time of day. Times are seconds since the epoch, read in UTC
(1970-01-01 was a Thursday).

Codes, 0 meaning "none" (padding) as with attribute codes:

- hour: 1..24 (00:00-00:59 is 1);
- weekday: 1..7, Monday 1 .. Sunday 7 (ISO 8601);
- gap: 1 for a user's first event (no previous one), 2 for a gap under one second (events
  logged together), then ``3 + floor(log2(gap seconds))`` capped at ``n_gap_buckets``: 3 is
  1-2 s, 4 is 2-4 s, ..., 14 is about 17-34 minutes, 19 about 9-18 hours, 24 about 97-194 days.
"""

from __future__ import annotations

import numpy as np

from recsys.data.interactions import Interactions, has_clock

SECONDS_PER_DAY = 86400
EPOCH_WEEKDAY = 4  # 1970-01-01, ISO weekday (Monday 1): a Thursday
N_GAP_BUCKETS = 32  # buckets 1..32: the last holds every gap from 2**29 s (17 years) on
CONTEXT_FIELDS = ("hour", "weekday", "gap")
CONTEXT_SIZES = (24, 7, N_GAP_BUCKETS)  # largest code of each column (embedding rows: + 1)


def context_codes(
    user: np.ndarray, time: np.ndarray, n_gap_buckets: int = N_GAP_BUCKETS
) -> np.ndarray:
    """(n, 3) int64 codes ``hour, weekday, gap`` of the events ``(user[k], time[k])``, in the
    given order (the events need not be sorted). The gap is measured to the same user's previous
    event among those given, ordered by time, ties by position: pass the whole history a part
    follows (train + validation before test) for the gaps of its first events to be right.

    Args:
        user: (n,) user ids (any integer ids).
        time: (n,) seconds since the epoch (float or int), finite.
        n_gap_buckets: the largest gap code, >= 3.
    """
    user = np.asarray(user)
    t = np.asarray(time, dtype=np.float64)
    if user.shape != t.shape or t.ndim != 1:
        raise ValueError(f"user and time must be (n,) arrays, got {user.shape} and {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("time must be finite seconds since the epoch")
    if n_gap_buckets < 3:
        raise ValueError(f"n_gap_buckets must be >= 3, got {n_gap_buckets}")
    n = len(t)
    out = np.zeros((n, 3), dtype=np.int64)
    if n == 0:
        return out
    day = np.floor(t / SECONDS_PER_DAY)  # floor: an event before 1970 falls on its own day
    seconds = t - day * SECONDS_PER_DAY
    out[:, 0] = np.minimum(seconds // 3600, 23).astype(np.int64) + 1
    out[:, 1] = (day.astype(np.int64) + EPOCH_WEEKDAY - 1) % 7 + 1

    order = np.lexsort((np.arange(n), t, user))  # by user, then time, then position
    u, ts = user[order], t[order]
    first = np.ones(n, dtype=bool)
    first[1:] = u[1:] != u[:-1]
    gap = np.zeros(n)
    gap[1:] = ts[1:] - ts[:-1]
    with np.errstate(divide="ignore"):
        log_gap = np.floor(np.log2(np.maximum(gap, 1.0)))  # gap >= 1 s here, so log2 >= 0
    bucket = np.where(gap < 1.0, 2, 3 + log_gap.astype(np.int64))
    bucket = np.minimum(np.where(first, 1, bucket), n_gap_buckets)
    out[order, 2] = bucket
    return out


def interaction_context(
    inter: Interactions, n_gap_buckets: int = N_GAP_BUCKETS
) -> np.ndarray | None:
    """(len(inter), 3) codes of a log's events (:func:`context_codes`), or None when its
    ``time`` is no clock (no time at all, or per-user sequence positions)."""
    if inter.time is None or not has_clock(inter):
        return None
    return context_codes(inter.user, inter.time, n_gap_buckets)
