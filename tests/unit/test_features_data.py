"""Encoding attribute tables (recsys.data.features.encode) against a brute-force reference over
the raw rows, the audit's own check (recsys.data.audit.audit_features) catching a wrong table,
and the tables' plain-array storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.audit import audit_features
from recsys.data.features import FeatureTable, RawFeatures, encode, merge_raw


def random_raw(rng: np.random.Generator, n_rows: int = 60) -> RawFeatures:
    """Rows for ids 0..n_rows-1 (some outside the log) with a multi-valued ``tag``, a single
    ``brand`` and a numeric ``price`` (NaN for some)."""
    ids = rng.permutation(n_rows).astype(np.int64) + 100  # ids 100.. in a shuffled order
    rows, fields, vals = [], [], []
    for r in range(n_rows):
        for t in rng.choice(12, size=rng.integers(0, 4), replace=False):
            rows.append(r), fields.append("tag"), vals.append(f"t{t}")
        if rng.random() < 0.8:
            rows.append(r), fields.append("brand"), vals.append(f"b{rng.integers(8)}")
    price = rng.normal(10, 3, n_rows)
    price[rng.random(n_rows) < 0.2] = np.nan
    cat = pd.DataFrame({"row": np.array(rows, np.int64), "field": fields, "value": vals})
    return RawFeatures("item", ids, cat, {"price": price}, "items.csv")


def reference(raw: RawFeatures, entity_ids, in_train, min_count=1):
    """Per field: the vocabulary and each entity's set of values, by Python sets."""
    index = {int(x): i for i, x in enumerate(entity_ids)}
    per_entity: dict[str, dict[int, set[str]]] = {}
    for r, f, v in zip(*(raw.categorical[c] for c in ("row", "field", "value")), strict=True):
        e = index.get(int(raw.ids[r]))
        if e is not None:
            per_entity.setdefault(f, {}).setdefault(e, set()).add(v)
    vocab = {}
    for f, by_entity in per_entity.items():
        counts: dict[str, int] = {}
        for e, vs in by_entity.items():
            if in_train[e]:
                for v in vs:
                    counts[v] = counts.get(v, 0) + 1
        vocab[f] = sorted(v for v, c in counts.items() if c >= min_count)
    return vocab, per_entity


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_count", [1, 3])
def test_encode_matches_brute_force(seed, min_count):
    rng = np.random.default_rng(seed)
    raw = random_raw(rng)
    entity_ids = np.sort(rng.choice(np.arange(90, 170), size=50, replace=False)).astype(np.int64)
    in_train = rng.random(50) < 0.7
    table = encode(raw, entity_ids, in_train, min_count=min_count)
    vocab, per_entity = reference(raw, entity_ids, in_train, min_count)
    for name in ("brand", "tag"):
        f = table.field(name)
        assert list(f.vocab) == vocab[name]
        lookup = {v: k + 1 for k, v in enumerate(vocab[name])}
        for e in range(len(entity_ids)):
            want = sorted(lookup[v] for v in per_entity[name].get(e, set()) if v in lookup)
            row = table.codes[name][e]
            assert row[: len(want)].tolist() == want and not row[len(want) :].any()
    # a value only test/cold entities hold is unknown: no code anywhere
    outside = {v for e, vs in per_entity["tag"].items() if not in_train[e] for v in vs}
    assert not (outside - set(vocab["tag"])) & set(table.field("tag").vocab)
    # numeric: numpy's mean and std over training entities with a value
    index = {int(x): i for i, x in enumerate(entity_ids)}
    col = np.full(len(entity_ids), np.nan)
    for r, x in enumerate(raw.ids):
        if int(x) in index:
            col[index[int(x)]] = raw.numeric["price"][r]
    train_vals = col[in_train & ~np.isnan(col)]
    f = table.field("price")
    assert f.mean == pytest.approx(np.mean(train_vals)) and f.std == pytest.approx(
        np.std(train_vals)
    )
    expected = np.where(np.isnan(col), 0.0, (col - np.mean(train_vals)) / np.std(train_vals))
    np.testing.assert_allclose(table.values["price"], expected, rtol=1e-5, atol=1e-6)
    assert table.present.tolist() == [int(x) in set(raw.ids.tolist()) for x in entity_ids]
    report = audit_features(raw, table, entity_ids, in_train, min_count)
    assert report["ok"], report
    assert report["rows_matching_no_entity"] == sum(int(x) not in index for x in raw.ids)


def test_value_of_a_cold_entity_only_is_unknown():
    cat = pd.DataFrame(
        {"row": [0, 1, 2, 2], "field": ["brand"] * 4, "value": ["acme", "acme", "new", "zeta"]}
    )
    raw = RawFeatures("item", np.array([1, 2, 3]), cat, {"price": np.array([1.0, 3.0, 100.0])})
    table = encode(raw, np.array([1, 2, 3]), np.array([True, True, False]))
    assert table.field("brand").vocab == ("acme",)
    assert table.codes["brand"].tolist() == [[1], [1], [0]]
    assert table.field("price").mean == 2.0 and table.field("price").std == 1.0
    report = audit_features(raw, table, np.array([1, 2, 3]), np.array([True, True, False]))
    assert report["fields"]["brand"]["values_only_outside_train"] == 2  # new, zeta
    assert report["ok"]


def test_audit_catches_a_vocabulary_not_from_training():
    """The audit recomputes the vocabularies from the raw rows: a table whose vocabulary holds
    a value of a non-training entity (what a leak would look like) fails it."""
    cat = pd.DataFrame({"row": [0, 1], "field": ["brand", "brand"], "value": ["acme", "new"]})
    raw = RawFeatures("item", np.array([1, 2]), cat)
    in_train = np.array([True, False])
    leaky = encode(raw, np.array([1, 2]), np.array([True, True]))  # vocab from every entity
    report = audit_features(raw, leaky, np.array([1, 2]), in_train)
    assert not report["ok"] and not report["fields"]["brand"]["vocabulary_from_train"]
    assert audit_features(raw, encode(raw, np.array([1, 2]), in_train), [1, 2], in_train)["ok"]


def test_string_ids_and_int_feature_ids_match_by_text():
    cat = pd.DataFrame({"row": [0, 1], "field": ["g", "g"], "value": ["x", "y"]})
    raw = RawFeatures("item", np.array([7, 8]), cat)
    table = encode(raw, np.array(["7", "8"], dtype=object), np.array([True, True]))
    assert table.codes["g"].tolist() == [[1], [2]]


def test_table_round_trips_through_npz(tmp_path):
    rng = np.random.default_rng(0)
    raw = random_raw(rng)
    ids = np.arange(90, 170, dtype=np.int64)
    table = encode(raw, ids, rng.random(len(ids)) < 0.5)
    np.savez(tmp_path / "t.npz", **table.to_arrays("item_features"))
    with np.load(tmp_path / "t.npz", allow_pickle=False) as z:
        back = FeatureTable.from_arrays(z, "item_features", "item")
        assert FeatureTable.from_arrays(z, "user_features", "user") is None
    assert back.fields == table.fields
    for name in table.codes:
        np.testing.assert_array_equal(back.codes[name], table.codes[name])
    for name in table.values:
        np.testing.assert_array_equal(back.values[name], table.values[name])
    np.testing.assert_array_equal(back.present, table.present)


def test_merge_and_take():
    a = RawFeatures(
        "item",
        np.array([1, 2]),
        pd.DataFrame({"row": [0, 1], "field": ["genre", "genre"], "value": ["x", "y"]}),
        {"year_num": np.array([1990.0, 2000.0])},
        "movies.csv",
    )
    b = RawFeatures(
        "item",
        np.array([2, 3]),
        pd.DataFrame({"row": [0, 1, 1], "field": ["tag"] * 3, "value": ["p", "q", "r"]}),
        source="tags.csv",
    )
    m = merge_raw(a, b)
    assert m.ids.tolist() == [1, 2, 3] and m.ids.dtype == np.int64
    np.testing.assert_array_equal(m.numeric["year_num"], [1990.0, 2000.0, np.nan])
    got = sorted(zip(m.ids[m.categorical["row"]].tolist(), m.categorical["value"], strict=True))
    assert got == [(1, "x"), (2, "p"), (2, "y"), (3, "q"), (3, "r")]
    t = m.take(np.array([True, False, True]))
    assert t.ids.tolist() == [1, 3]
    got = sorted(zip(t.ids[t.categorical["row"]].tolist(), t.categorical["value"], strict=True))
    assert got == [(1, "x"), (3, "q"), (3, "r")]
    np.testing.assert_array_equal(t.numeric["year_num"], [1990.0, np.nan])
