"""Leakage audit and descriptive statistics of a prepared split.

The audit answers, for every split: do the parts share (user, item) pairs; does training see
interactions later than the first test interaction (must be 0 for a global time cutoff; for
leave-one-out it is reported, being the known cross-user leakage of that protocol); which test
users and items never occur in training; for ``data.split=cold_items``, how many items are
validation-cold and test-cold and that none of them has a training event; and where the item vocabulary and popularity statistics
come from. All values are plain ints, floats, strings or None, so the audit goes to JSON as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recsys.data.interactions import Interactions, Split, has_clock


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _pair_keys(inter: Interactions) -> np.ndarray:
    """Sorted distinct (user, item) pairs as int64 keys."""
    return _sorted_unique(inter.user.astype(np.int64) * inter.n_items + inter.item)


_CHUNK = 1 << 22  # events per chunk when a large log is matched against a small one


def _keys(inter: Interactions, start: int = 0, stop: int | None = None) -> np.ndarray:
    """(user, item) int64 keys of the events ``start:stop``, in log order."""
    return inter.user[start:stop].astype(np.int64) * inter.n_items + inter.item[start:stop]


def _pair_hits(small: Interactions, big: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """For the distinct pairs of ``small`` (sorted keys ``ks``): which occur in ``big``, and which
    events of ``big`` have a pair of ``small``. ``big`` is read in chunks, so no sorted copy of
    it (a training log of 100M events) is ever made."""
    ks = _pair_keys(small)
    found = np.zeros(len(ks), dtype=bool)
    big_mask = np.zeros(len(big), dtype=bool)
    for start in range(0, len(big), _CHUNK):
        kb = _keys(big, start, start + _CHUNK)
        pos = np.minimum(np.searchsorted(ks, kb), len(ks) - 1)
        hit = ks[pos] == kb
        found[pos[hit]] = True
        big_mask[start : start + len(kb)] = hit
    return found, big_mask


def _overlap(a: Interactions, b: Interactions) -> int:
    """Number of distinct (user, item) pairs present in both logs."""
    if not len(a) or not len(b):
        return 0
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return int(_pair_hits(small, big)[0].sum())


def _event_overlap(a: Interactions, b: Interactions) -> int:
    """Number of distinct identical events (user, item and time) present in both logs."""
    if a.time is None or b.time is None:
        return _overlap(a, b)
    if not len(a) or not len(b):
        return 0
    # an event in both logs has its pair in both: compare only the events of shared pairs
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    found, big_mask = _pair_hits(small, big)
    ks = _pair_keys(small)
    small_mask = found[np.searchsorted(ks, _keys(small))]
    cols = ["u", "i", "t"]
    fa, fb = (
        pd.DataFrame({"u": x.user[m], "i": x.item[m], "t": x.time[m]}).drop_duplicates()
        for x, m in ((small, small_mask), (big, big_mask))
    )
    return int(len(fa.merge(fb, on=cols, how="inner")))


def _absent(target: np.ndarray, known: np.ndarray, n: int) -> int:
    """Number of distinct ids in ``target`` that never occur in ``known``."""
    return int(
        ((np.bincount(target, minlength=n) > 0) & (np.bincount(known, minlength=n) == 0)).sum()
    )


def _cold_audit(split: Split, known: Interactions) -> dict[str, int]:
    """``data.split=cold_items``: cold items per part, and the leaks that must be 0: cold items
    with an event in the model's history (training, fold-in input), validation-cold items
    among the test targets, test-cold items among the validation targets."""
    label = np.asarray(split.cold_items)
    n = len(label)

    def has(inter: Interactions) -> np.ndarray:
        return np.bincount(inter.item, minlength=n) > 0

    return {
        "validation_cold": int((label == 1).sum()),
        "test_cold": int((label == 2).sum()),
        "in_train": int((has(known) & (label > 0)).sum()),
        "validation_cold_in_test": int((has(split.test) & (label == 1)).sum()),
        "test_cold_in_val": int((has(split.val) & (label == 2)).sum()),
    }


def audit_split(split: Split, repeats: bool = False) -> dict[str, Any]:
    """The leakage audit of ``split`` (see the module docstring).

    ``repeats``: the log keeps repeated (user, item) events (``data.dedup=false``), so a pair may
    legitimately recur across parts (repeat consumption); the pair overlap is then reported and
    only identical events (same user, item and time) in two parts count as a leak.
    """
    tr, va, te = split.train, split.val, split.test
    # the history the model sees: the training log, plus fold-in input of held-out users
    known = tr
    for extra in (getattr(split, "val_input", None), getattr(split, "test_input", None)):
        if extra is not None:
            known = known.concat(extra)
    overlap = {
        "train_val": _overlap(known, va),
        "train_test": _overlap(known, te),
        "val_test": _overlap(va, te),
    }
    # per-user sequence positions (one-line-per-user files) are no clock shared across users
    temporal: dict[str, Any] = {"applicable": False}
    if tr.time is not None and len(te) and has_clock(tr):
        first_test = float(te.time.min())
        temporal = {
            "applicable": True,
            "first_test_time": first_test,
            "train_after_first_test": int((tr.time > first_test).sum()),
            "val_after_first_test": int((va.time > first_test).sum()) if len(va) else 0,
            # only a global cutoff promises 0; per-user protocols report it
            "must_be_zero": split.name == "temporal",
        }
    item_train = np.bincount(tr.item, minlength=tr.n_items) > 0
    result: dict[str, Any] = {
        "split": split.name,
        "pair_overlap": overlap,
        "temporal": temporal,
        "test_users_not_in_train": _absent(te.user, tr.user, tr.n_users),
        "test_items_not_in_train": _absent(te.item, tr.item, tr.n_items),
        "val_users_not_in_train": _absent(va.user, tr.user, tr.n_users),
        "val_items_not_in_train": _absent(va.item, tr.item, tr.n_items),
        # ids are encoded over the whole preprocessed log, so the vocabulary includes items that
        # occur only in validation or test; popularity (the baseline, samplers) counts train only
        "item_vocabulary": "train" if item_train.all() else "full log (before the split)",
        "items_outside_train": int((~item_train).sum()),
        "popularity_statistics": "train",
        "preprocessing_scope": "full log (before the split)",
    }
    result["repeats_allowed"] = bool(repeats)
    if repeats:
        event_overlap = {
            "train_val": _event_overlap(known, va),
            "train_test": _event_overlap(known, te),
            "val_test": _event_overlap(va, te),
        }
        result["event_overlap"] = event_overlap
        leaks = sum(event_overlap.values())
    else:
        leaks = sum(overlap.values())
    if temporal.get("must_be_zero"):
        leaks += temporal["train_after_first_test"] + temporal["val_after_first_test"]
    if split.cold_items is not None:
        result["cold_items"] = cold = _cold_audit(split, known)
        leaks += cold["in_train"] + cold["validation_cold_in_test"] + cold["test_cold_in_val"]
    result["ok"] = leaks == 0
    return result


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of a non-negative count vector (0: uniform, -> 1: concentrated)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total)) - (n + 1.0) / n)


QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def describe(split: Split) -> dict[str, Any]:
    """Dataset statistics over all parts of ``split`` plus split sizes and the audit."""
    parts = [split.train, split.val, split.test]
    fold_in = (getattr(split, "val_input", None), getattr(split, "test_input", None))
    parts += [p for p in fold_in if p is not None]
    all_users = np.concatenate([p.user for p in parts])
    all_items = np.concatenate([p.item for p in parts])
    per_user = np.bincount(all_users, minlength=split.n_users)
    per_user = per_user[per_user > 0]
    per_item = np.bincount(all_items, minlength=split.n_items)
    n_users, n_items, n = int(len(per_user)), int((per_item > 0).sum()), int(len(all_users))
    sizes = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    for name, part in zip(("val_input", "test_input"), fold_in, strict=False):
        if part is not None:
            sizes[name] = len(part)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
        "history_length": {
            **{f"q{int(q * 100)}": float(np.quantile(per_user, q)) for q in QUANTILES},
            "mean": float(per_user.mean()) if len(per_user) else 0.0,
        },
        "item_gini": gini(per_item[per_item > 0]),
        "split": split.name,
        "split_sizes": {k: int(v) for k, v in sizes.items()},
        "audit": split.audit if split.audit is not None else audit_split(split),
    }


def audit_features(
    raw: Any, table: Any, entity_ids: np.ndarray, in_train: np.ndarray, min_count: int = 1
) -> dict[str, Any]:
    """The ``features`` entry of the audit for one entity: what the attribute file held, what
    the encoded table kept, and a check, recomputed from the raw rows by another path than
    :func:`recsys.data.features.encode`, that every vocabulary is exactly the values held by at
    least ``min_count`` training entities and every numeric normalisation is the training
    entities' mean and standard deviation (``ok``; a failure also fails the split's ``ok``).

    Args:
        raw: the :class:`~recsys.data.features.RawFeatures` that were encoded.
        table: the :class:`~recsys.data.features.FeatureTable` made from them.
        entity_ids: (n,) external id of each internal id.
        in_train: (n,) bool, the entity has a training event.

    Counts only; never an id or a value (a tag can be personal text).
    """
    from pathlib import Path

    in_train = np.asarray(in_train, dtype=bool)
    position = {str(x): i for i, x in enumerate(np.asarray(entity_ids).tolist())}
    ent = np.array([position.get(str(x), -1) for x in np.asarray(raw.ids).tolist()], np.int64)
    fields: dict[str, Any] = {}
    ok = True
    cat = raw.categorical
    if len(cat):
        cat = pd.DataFrame(
            {
                "entity": ent[cat["row"].to_numpy(np.int64)],
                "field": cat["field"].astype(str).to_numpy(),
                "value": cat["value"].astype(str).to_numpy(),
            }
        )
        cat = cat[cat["entity"] >= 0].drop_duplicates()
    for f in table.fields:
        if f.kind == "categorical":
            part = cat[cat["field"] == f.name] if len(cat) else cat
            train_part = part[in_train[part["entity"].to_numpy(np.int64)]] if len(part) else part
            held = train_part.groupby("value")["entity"].nunique() if len(part) else pd.Series()
            expected = tuple(sorted(str(v) for v in held.index[held.to_numpy() >= min_count]))
            right = expected == tuple(f.vocab)
            values = set(part["value"]) if len(part) else set()
            codes = table.codes[f.name]
            fields[f.name] = {
                "kind": "categorical",
                "vocabulary": len(f.vocab),
                "width": int(f.width),
                "values_held": len(values),  # by entities of the log
                # held only by entities without a training event (a cold item's new brand)
                "values_only_outside_train": len(values - set(held.index)),
                "values_below_min_count": int((held.to_numpy() < min_count).sum()),
                "entities_with_a_known_value": int((codes > 0).any(axis=1).sum()),
                "vocabulary_from_train": right,
            }
            ok &= right
        else:
            col = np.full(len(in_train), np.nan)
            matched = ent >= 0
            col[ent[matched]] = np.asarray(raw.numeric[f.name], np.float64)[matched]
            train_vals = col[in_train & ~np.isnan(col)]
            mean = float(np.mean(train_vals)) if len(train_vals) else 0.0
            std = float(np.std(train_vals)) if len(train_vals) else 1.0
            right = bool(np.isclose(f.mean, mean) and np.isclose(f.std, std if std > 0 else 1.0))
            fields[f.name] = {
                "kind": "numeric",
                "mean": f.mean,
                "std": f.std,
                "entities_with_a_value": int((~np.isnan(col)).sum()),
                "normalisation_from_train": right,
            }
            ok &= right
    present = np.asarray(table.present, dtype=bool)
    return {
        "files": [Path(s).name for s in str(raw.source).split(" + ")],
        "rows": len(raw.ids),
        "rows_matching_no_entity": int((ent < 0).sum()),
        "entities": len(present),
        "entities_with_row": int(present.sum()),
        "training_entities": int(in_train.sum()),
        "training_entities_with_row": int((present & in_train).sum()),
        "min_count": int(min_count),
        "fields": fields,
        "ok": bool(ok),
    }
