"""Train / validation / test splits: pure functions of an :class:`Interactions` log.

Every function returns a :class:`Split` whose three parts partition the input events (no event is
in two parts, none is lost) and share the input's id maps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from recsys.data.interactions import Interactions, Split
from recsys.errors import ConfigError, DataError

SPLITS = ("leave_one_out", "random", "temporal", "holdout_users", "cold_items")


def _parts(inter: Interactions, part: np.ndarray, name: str) -> Split:
    """Build a Split from a per-event label: 0 train, 1 validation, 2 test."""
    return Split(
        train=inter.select(part == 0),
        val=inter.select(part == 1),
        test=inter.select(part == 2),
        name=name,
    )


def _rank_in_user_from_end(inter: Interactions, perm: np.ndarray) -> np.ndarray:
    """For events sorted by ``perm`` (grouped by user), each event's position counted from the
    user's last event (0 = last), returned in the original event order."""
    users = inter.user[perm]
    counts = np.bincount(users, minlength=inter.n_users)
    ends = np.cumsum(counts)  # exclusive end of each user's block in sorted order
    pos_from_end = ends[users] - 1 - np.arange(len(perm))
    out = np.empty(len(perm), dtype=np.int64)
    out[perm] = pos_from_end
    return out


def _require_time(inter: Interactions, split: str) -> None:
    if inter.time is None:
        raise DataError(
            f"data.split={split} needs an interaction order (timestamps or sequence positions), "
            "but this dataset has none; use data.split=random"
        )


def leave_one_out(inter: Interactions) -> Split:
    """Each user's last event (by time) is test, the second-to-last validation, the rest train.

    Users with two events have only a test event; users with one event are train-only. Ties in
    time keep the log order (stable), so the split is deterministic.
    """
    _require_time(inter, "leave_one_out")
    return _parts(inter, _leave_one_out_parts(inter), "leave_one_out")


def _leave_one_out_parts(inter: Interactions) -> np.ndarray:
    """(n,) int8 per-event label of :func:`leave_one_out`: 0 train, 1 validation, 2 test."""
    from_end = _rank_in_user_from_end(inter, inter.order())
    counts = np.bincount(inter.user, minlength=inter.n_users)[inter.user]
    part = np.zeros(len(inter), dtype=np.int8)
    part[(from_end == 0) & (counts >= 2)] = 2
    part[(from_end == 1) & (counts >= 3)] = 1
    return part


def check_cold_item_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise ConfigError(f"data.cold_item_ratio must be in (0, 1), got {ratio!r}")


def cold_items(inter: Interactions, cold_item_ratio: float, seed: int) -> Split:
    """Cold-start items: items never seen in training are ranked against the warm catalogue.

    A seeded random permutation of the catalogue picks ``round(cold_item_ratio * n_items)``
    cold items (at least two: one per half); the first half of them (``n_cold // 2``) are
    validation-cold, the rest test-cold, so hyper-parameters chosen on validation never see a
    test cold item. Every event on a cold item leaves training: events on validation-cold items
    go to ``val``, events on test-cold items to ``test``. The events on the other (warm) items
    are split by :func:`leave_one_out` (each user's last warm event is test, the second-to-last
    validation, the rest train). So ``val`` = warm validation + validation-cold events and
    ``test`` = warm test + test-cold events.

    ``Split.cold_items`` labels every item: 0 warm, 1 validation-cold, 2 test-cold. A warm item
    whose only events are held-out leave-one-out targets has no training event either; it stays
    warm (its label is 0), as in :func:`leave_one_out`.
    """
    _require_time(inter, "cold_items")
    check_cold_item_ratio(cold_item_ratio)
    n_items = inter.n_items
    n_cold = max(int(round(cold_item_ratio * n_items)), 2)
    if n_cold >= n_items:
        raise ConfigError(
            f"data.cold_item_ratio={cold_item_ratio} leaves no warm item among the {n_items} "
            "items; lower it"
        )
    rng = np.random.default_rng(seed)
    cold = rng.permutation(n_items)[:n_cold]
    label = np.zeros(n_items, dtype=np.int8)  # 0 warm, 1 validation-cold, 2 test-cold
    label[cold[: n_cold // 2]] = 1
    label[cold[n_cold // 2 :]] = 2
    event_label = label[inter.item]
    warm = event_label == 0
    part = event_label.copy()  # cold events: their item's part
    part[warm] = _leave_one_out_parts(inter.select(warm))
    return replace(_parts(inter, part, "cold_items"), cold_items=label)


def random_split(inter: Interactions, val_ratio: float, test_ratio: float, seed: int) -> Split:
    """Per user, shuffle the events and hold out ``val_ratio`` and ``test_ratio`` of them.

    Counts follow RecBole's ``RS`` split: ``floor(ratio * n)`` per held-out part, raised to one
    event when ``0 < ratio * n < 1`` while the user keeps at least one training event.
    """
    check_ratios(val_ratio, test_ratio)
    n = np.bincount(inter.user, minlength=inter.n_users)
    n_val = np.floor(val_ratio * n).astype(np.int64)
    n_test = np.floor(test_ratio * n).astype(np.int64)
    # RecBole raises a held-out part from 0 to 1 (test first, then validation) while train keeps > 1.
    for n_part, ratio in ((n_test, test_ratio), (n_val, val_ratio)):
        n_train = n - n_val - n_test
        bump = (ratio * n > 0) & (ratio * n < 1) & (n_train > 1)
        n_part += bump
    rng = np.random.default_rng(seed)
    perm = np.lexsort((rng.random(len(inter)), inter.user))  # random order inside each user
    from_end = _rank_in_user_from_end(inter, perm)
    u_test, u_val = n_test[inter.user], n_val[inter.user]
    part = np.zeros(len(inter), dtype=np.int8)
    part[from_end < u_test + u_val] = 1
    part[from_end < u_test] = 2
    return _parts(inter, part, "random")


def temporal_split(inter: Interactions, val_ratio: float, test_ratio: float) -> Split:
    """A global time cutoff: the latest ``test_ratio`` of events (by time) are test, the
    ``val_ratio`` before them validation. Every training event precedes every validation event,
    which precedes every test event; ties at a cutoff go to the later part."""
    _require_time(inter, "temporal")
    check_ratios(val_ratio, test_ratio)
    assert inter.time is not None
    t = np.sort(inter.time)
    n = len(t)
    t_test = t[min(n - 1, int(np.floor(n * (1 - test_ratio))))]
    t_val = t[min(n - 1, int(np.floor(n * (1 - test_ratio - val_ratio))))]
    part = np.zeros(n, dtype=np.int8)
    part[inter.time >= t_val] = 1
    part[inter.time >= t_test] = 2
    return _parts(inter, part, "temporal")


def holdout_users(
    inter: Interactions,
    n_heldout_users: int,
    fold_in_ratio: float,
    seed: int,
    fold_in_events: int | None = None,
) -> Split:
    """Strong generalization (Liang et al., WWW 2018): evaluated users never train.

    A seeded random permutation of the users picks ``n_heldout_users`` validation users and
    ``n_heldout_users`` test users; every other user is a training user with all their events in
    ``train``. Each held-out user's events are shuffled (seeded) and ``floor(fold_in_ratio * n)``
    of them, kept within ``[1, n - 1]`` when ``n >= 2``, become their fold-in input
    (``val_input`` / ``test_input``: the history fed to the model); the rest are the targets
    (``val`` / ``test``). A held-out user with one event has only input and is not evaluated.

    ``fold_in_events`` (cold users): instead, each held-out user's first ``fold_in_events``
    events in time order are the input and every later event a target; 0 gives no history at
    all, so a model answers from the user's attributes alone. A user with no event beyond the
    input is not evaluated.

    As in the paper's preprocessing, items no training user interacted with are removed from the
    catalogue (their events dropped, item ids re-encoded): no model can learn them. Apart from
    those events, the five parts partition the input.
    """
    if not isinstance(n_heldout_users, int) or n_heldout_users < 1:
        raise ConfigError(
            f"data.n_heldout_users must be a positive integer, got {n_heldout_users!r}"
        )
    if not 0 < fold_in_ratio < 1:
        raise ConfigError(f"data.fold_in_ratio must be in (0, 1), got {fold_in_ratio}")
    if fold_in_events is not None and (
        isinstance(fold_in_events, bool)
        or not isinstance(fold_in_events, int)
        or fold_in_events < 0
    ):
        raise ConfigError(
            f"data.fold_in_events must be null or an integer >= 0, got {fold_in_events!r}"
        )
    active = np.flatnonzero(np.bincount(inter.user, minlength=inter.n_users))
    if 2 * n_heldout_users >= len(active):
        raise ConfigError(
            f"data.n_heldout_users={n_heldout_users}: 2 x {n_heldout_users} held-out users leave "
            f"no training user among the {len(active)} users; lower it"
        )
    rng = np.random.default_rng(seed)
    role = np.zeros(inter.n_users, dtype=np.int8)  # 0 train, 1 validation, 2 test
    held = rng.permutation(active)[: 2 * n_heldout_users]
    role[held[:n_heldout_users]] = 1
    role[held[n_heldout_users:]] = 2

    # keep only items seen in training, re-encoded to contiguous ids in the same order
    train_items = np.unique(inter.item[role[inter.user] == 0])
    remap = np.full(inter.n_items, -1, dtype=np.int64)
    remap[train_items] = np.arange(len(train_items))
    keep = remap[inter.item] >= 0
    inter = Interactions(
        user=inter.user[keep],
        item=remap[inter.item[keep]],
        time=None if inter.time is None else inter.time[keep],
        rating=None if inter.rating is None else inter.rating[keep],
        user_ids=inter.user_ids,
        item_ids=inter.item_ids[train_items],
    )

    n = np.bincount(inter.user, minlength=inter.n_users)
    if fold_in_events is None:
        n_in = np.floor(fold_in_ratio * n).astype(np.int64)
        n_in = np.where(n >= 2, np.clip(n_in, 1, n - 1), n)
        perm = np.lexsort((rng.random(len(inter)), inter.user))  # random order inside each user
    else:  # the first fold_in_events events in time order; the rest are targets
        n_in = np.minimum(n, fold_in_events)
        perm = inter.order()
    from_end = _rank_in_user_from_end(inter, perm)
    is_target = from_end < (n - n_in)[inter.user]
    r = role[inter.user]
    part = np.where(r == 0, 0, np.where(is_target, r, r + 2)).astype(np.int8)
    return Split(
        train=inter.select(part == 0),
        val=inter.select(part == 1),
        test=inter.select(part == 2),
        name="holdout_users",
        val_input=inter.select(part == 3),
        test_input=inter.select(part == 4),
    )


def check_ratios(val_ratio: float, test_ratio: float) -> None:
    for key, value in (("data.val_ratio", val_ratio), ("data.test_ratio", test_ratio)):
        if not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if val_ratio + test_ratio >= 1:
        raise ConfigError(
            f"data.val_ratio + data.test_ratio must be < 1, got {val_ratio} + {test_ratio}"
        )


def make_split(
    inter: Interactions,
    method: str,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    n_heldout_users: int = 0,
    fold_in_ratio: float = 0.8,
    cold_item_ratio: float = 0.2,
    fold_in_events: int | None = None,
) -> Split:
    """Dispatch on ``data.split``."""
    if method == "cold_items":
        return cold_items(inter, cold_item_ratio, seed)
    if method == "holdout_users":
        return holdout_users(inter, n_heldout_users, fold_in_ratio, seed, fold_in_events)
    if method == "leave_one_out":
        return leave_one_out(inter)
    if method == "random":
        return random_split(inter, val_ratio, test_ratio, seed)
    if method == "temporal":
        return temporal_split(inter, val_ratio, test_ratio)
    raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got {method!r}")
