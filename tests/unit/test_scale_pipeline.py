"""The lean code paths used at 100M-event scale give exactly what the straightforward ones give:
id encoding without a sort (vs ``np.unique``), the chunked pair/event overlap of the audit (vs a
brute-force set intersection), and the block-wise scale generator (unique pairs, int32 ids)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.runner.scale import scale_source
from recsys.data import audit
from recsys.data.interactions import Interactions, encode_ids


@pytest.mark.parametrize(
    "x",
    [
        np.array([5, 3, 3, 9, 0, 5], dtype=np.int64),  # dense non-negative ints: table path
        np.array([7, 2, 7, 2, 11], dtype=np.int32),  # int32 ids keep their dtype
        np.array([3, 10**12, 3, 42], dtype=np.int64),  # a huge id: falls back to np.unique
        np.array([-4, 2, -4, 9], dtype=np.int64),  # negative ids: np.unique
        np.array(["b", "a", "c", "a"]),  # strings: np.unique
    ],
)
def test_encode_ids_equals_np_unique(x):
    ids, inverse = encode_ids(x)
    ref_ids, ref_inverse = np.unique(x, return_inverse=True)
    assert ids.dtype == ref_ids.dtype
    np.testing.assert_array_equal(ids, ref_ids)
    assert inverse.dtype == np.int64 and inverse.ndim == 1
    np.testing.assert_array_equal(inverse, ref_inverse.ravel())
    np.testing.assert_array_equal(ids[inverse], x)  # decodes back


def test_encode_ids_random_against_np_unique():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 5_000, size=20_000)
    ids, inverse = encode_ids(x)
    ref_ids, ref_inverse = np.unique(x, return_inverse=True)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(inverse, ref_inverse)


def _log(rng, n, n_users=30, n_items=20, times=5):
    df = pd.DataFrame(
        {
            "user": rng.integers(0, n_users, n),
            "item": rng.integers(0, n_items, n),
            "time": rng.integers(0, times, n).astype(float),
        }
    )
    return df


def _brute_pairs(a, b):
    return len(set(zip(a.user, a.item, strict=True)) & set(zip(b.user, b.item, strict=True)))


def _brute_events(a, b):
    ea = set(zip(a.user, a.item, a.time, strict=True))
    eb = set(zip(b.user, b.item, b.time, strict=True))
    return len(ea & eb)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audit_overlaps_match_brute_force(seed, monkeypatch):
    monkeypatch.setattr(audit, "_CHUNK", 7)  # many chunks even on a small log
    rng = np.random.default_rng(seed)
    whole = Interactions.from_frame(_log(rng, 700))
    cut = rng.integers(0, 3, len(whole))
    a, b = whole.select(cut == 0), whole.select(cut == 1)
    small = whole.select(np.flatnonzero(cut == 2)[:15])
    assert _brute_events(a, b) > 0  # the case the filter must not lose
    for x, y in ((a, b), (b, a), (a, small), (small, a)):
        assert audit._overlap(x, y) == _brute_pairs(x, y) > 0
        assert audit._event_overlap(x, y) == _brute_events(x, y)
    empty = whole.select(np.zeros(len(whole), dtype=bool))
    assert audit._overlap(a, empty) == audit._event_overlap(empty, a) == 0


def test_scale_source_blocks_give_unique_int32_pairs():
    cfg = {"scale_users": 3_000, "scale_items": 500, "scale_interactions": 150_000}
    df = scale_source(cfg)
    assert df["user"].dtype == np.int32 and df["item"].dtype == np.int32
    assert not df.duplicated(["user", "item"]).any()
    assert df["user"].nunique() == 3_000 and df["item"].between(1, 500).all()
    assert abs(len(df) - 150_000) < 0.1 * 150_000
    # the same seed gives the same log
    pd.testing.assert_frame_equal(df, scale_source(cfg))


def _reference_negatives(user, num_items, num, positive_keys, generator, max_rounds=20):
    """The straightforward sampler: every round re-checks the whole batch."""
    import torch

    neg = torch.randint(num_items, (len(user), num), generator=generator)
    for _ in range(max_rounds):
        keys = user[:, None] * num_items + neg
        pos = torch.searchsorted(positive_keys, keys).clamp_(max=len(positive_keys) - 1)
        hit = positive_keys[pos] == keys
        if int(hit.sum()) == 0:
            break
        neg[hit] = torch.randint(num_items, (int(hit.sum()),), generator=generator)
    return neg


@pytest.mark.parametrize("num", [1, 3])
@pytest.mark.parametrize("max_rounds", [20, 2])
def test_sample_negatives_redraws_like_the_full_check(num, max_rounds):
    import torch

    from recsys.data.loaders import sample_negatives

    rng = np.random.default_rng(num)
    n_users, n_items = 50, 12
    # dense histories (about half the items are positives), so several redraw rounds happen
    pairs = {(u, i) for u in range(n_users) for i in range(n_items - 3) if rng.random() < 0.5}
    keys = torch.sort(torch.tensor([u * n_items + i for u, i in pairs])).values
    user = torch.as_tensor(rng.integers(0, n_users, 400))
    got = sample_negatives(user, n_items, num, keys, torch.Generator().manual_seed(5), max_rounds)
    ref = _reference_negatives(
        user, n_items, num, keys, torch.Generator().manual_seed(5), max_rounds
    )
    assert torch.equal(got, ref)
    # enough rounds: no negative is a positive of its user (every user has free items)
    many = sample_negatives(user, n_items, num, keys, torch.Generator().manual_seed(5), 200)
    assert not torch.isin(user[:, None] * n_items + many, keys).any()
