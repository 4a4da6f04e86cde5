"""``data.split=cold_items`` against its definition, through the cache and the audit."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import cache
from recsys.data.audit import audit_split
from recsys.data.interactions import Interactions
from recsys.data.pipeline import SEEDED_SPLITS, check_config, prepare
from recsys.data.splits import cold_items, leave_one_out, make_split
from recsys.data.synthetic import generate
from recsys.errors import ConfigError, DataError
from tests.unit.test_cache import cfg as ml100k_cfg
from tests.unit.test_cache import write_ml100k


@pytest.fixture(scope="module")
def log() -> Interactions:
    df, _ = generate(n_users=150, n_items=90, n_groups=4, mean_length=12, seed=5)
    return Interactions.from_frame(df)


def events(part: Interactions) -> set[tuple[int, int, float]]:
    return set(zip(part.user.tolist(), part.item.tolist(), part.time.tolist(), strict=True))


def test_definition(log):
    s = cold_items(log, 0.2, seed=7)
    label = s.cold_items
    assert label.shape == (log.n_items,) and label.dtype == np.int8
    n_cold = round(0.2 * log.n_items)
    assert (label > 0).sum() == n_cold
    assert (label == 1).sum() == n_cold // 2 and (label == 2).sum() == n_cold - n_cold // 2
    # no cold item has a training event; validation-cold events are all in val, test-cold in test
    assert not (label[s.train.item] > 0).any()
    assert set(log.item[label[log.item] == 1].tolist()) <= set(s.val.item.tolist())
    assert not (label[s.val.item] == 2).any() and not (label[s.test.item] == 1).any()
    # every event on a cold item is in its part (counted with repeats)
    for part, lab in ((s.val, 1), (s.test, 2)):
        assert (label[part.item] == lab).sum() == (label[log.item] == lab).sum()
    # the three parts partition the log
    assert len(s.train) + len(s.val) + len(s.test) == len(log)
    assert events(s.train) | events(s.val) | events(s.test) == events(log)


def test_warm_part_is_leave_one_out_of_the_warm_events(log):
    s = cold_items(log, 0.3, seed=1)
    warm = s.cold_items[log.item] == 0
    ref = leave_one_out(log.select(warm))
    for part in ("train", "val", "test"):
        got = getattr(s, part)
        keep = s.cold_items[got.item] == 0
        want = getattr(ref, part)
        # the same events in the same (log) order
        assert np.array_equal(got.user[keep], want.user)
        assert np.array_equal(got.item[keep], want.item)
        assert np.array_equal(got.time[keep], want.time)


def test_seeded_and_deterministic(log):
    a, b = cold_items(log, 0.2, seed=3), cold_items(log, 0.2, seed=3)
    assert np.array_equal(a.cold_items, b.cold_items)
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part).user, getattr(b, part).user)
        assert np.array_equal(getattr(a, part).item, getattr(b, part).item)
    c = cold_items(log, 0.2, seed=4)
    assert not np.array_equal(a.cold_items, c.cold_items)
    # the halves are themselves a seeded draw: the validation-cold set depends on the seed too
    assert set(np.flatnonzero(a.cold_items == 1)) != set(np.flatnonzero(c.cold_items == 1))
    assert "cold_items" in SEEDED_SPLITS
    d = make_split(log, "cold_items", 0.1, 0.1, seed=3, cold_item_ratio=0.2)
    assert np.array_equal(a.cold_items, d.cold_items)


def test_ratio_respected(log):
    for ratio in (0.05, 0.2, 0.5):
        s = cold_items(log, ratio, seed=0)
        assert (s.cold_items > 0).sum() == max(round(ratio * log.n_items), 2)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, True, "x"])
def test_bad_ratio_refused(log, ratio):
    with pytest.raises(ConfigError, match="data.cold_item_ratio"):
        cold_items(log, ratio, seed=0)
    data = {"source": "recsys.data.synthetic.load", "split": "cold_items"}
    with pytest.raises(ConfigError, match="data.cold_item_ratio"):
        check_config({**data, "cold_item_ratio": ratio})


def test_needs_an_order(log):
    unordered = Interactions(log.user, log.item, None, None, log.user_ids, log.item_ids)
    with pytest.raises(DataError, match="data.split=cold_items"):
        cold_items(unordered, 0.2, seed=0)


def test_audit_counts_and_flags_a_leak(log):
    s = cold_items(log, 0.2, seed=2)
    audit = audit_split(s)
    assert audit["ok"]
    assert audit["cold_items"] == {
        "validation_cold": int((s.cold_items == 1).sum()),
        "test_cold": int((s.cold_items == 2).sum()),
        "in_train": 0,
        "validation_cold_in_test": 0,
        "test_cold_in_val": 0,
    }
    # a test-cold item with one training event: a leak the audit must report
    from dataclasses import replace

    item = int(np.flatnonzero(s.cold_items == 2)[0])
    ev = s.test.select(np.flatnonzero(s.test.item == item)[:1])
    leaky = replace(
        s,
        train=s.train.concat(ev),
        test=s.test.select(
            ~np.isin(np.arange(len(s.test)), np.flatnonzero(s.test.item == item)[:1])
        ),
    )
    bad = audit_split(leaky)
    assert bad["cold_items"]["in_train"] == 1 and not bad["ok"]


def test_pipeline_and_cache_round_trip(tmp_path, capsys):
    write_ml100k(tmp_path)
    c = ml100k_cfg(tmp_path, split="cold_items", cold_item_ratio=0.4, split_seed=11)
    first = prepare(c, seed=0)
    assert first.cold_items is not None and first.audit["cold_items"]["in_train"] == 0
    assert first.audit["ok"]
    again = prepare(c, seed=0)
    assert "reusing cached" in capsys.readouterr().err
    assert np.array_equal(first.cold_items, again.cold_items)
    assert again.audit["cold_items"] == first.audit["cold_items"]
    # another ratio is another split, another cache file
    other = prepare({**c, "cold_item_ratio": 0.2}, seed=0)
    assert (other.cold_items > 0).sum() < (first.cold_items > 0).sum()
    # a split without cold items stores none
    loo = prepare(ml100k_cfg(tmp_path), seed=0)
    assert loo.cold_items is None
    files = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 3
    with np.load(files[0]) as z:
        assert z.files  # readable without pickle
    assert cache.load(files[0], "other key") is None
