"""The synthetic generator: deterministic, long-tailed, and carrying its planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.synthetic import generate
from recsys.errors import ConfigError

SMALL = dict(n_users=400, n_items=200, n_groups=4, mean_length=30)


def test_same_seed_same_log_other_seed_other_log():
    a, _ = generate(**SMALL, seed=1)
    b, _ = generate(**SMALL, seed=1)
    c, _ = generate(**SMALL, seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_shape_of_a_real_log():
    df, truth = generate(**SMALL, seed=0)
    assert not df.duplicated(["user", "item"]).any()
    counts = df["item"].value_counts().to_numpy()
    # long tail: the top 10% of items hold far more than 10% of the events
    top = np.sort(counts)[::-1][: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3
    lengths = df.groupby("user").size()
    assert lengths.max() > 3 * lengths.median()
    # users mostly consume items of their own taste group
    g_user = truth["user_group"][df["user"].to_numpy() - 1]
    g_item = truth["item_group"][df["item"].to_numpy() - 1]
    assert (g_user == g_item).mean() > 0.5
    # sequential structure: the next item is often the planted successor of the previous one
    df = df.sort_values(["user", "time"])
    prev = df.groupby("user")["item"].shift()
    follows = truth["successor"][prev.dropna().astype(int).to_numpy() - 1] + 1
    assert (follows == df["item"][prev.notna()].to_numpy()).mean() > 0.1


def test_invalid_generator_values_are_refused():
    with pytest.raises(ConfigError, match="data.n_users"):
        generate(n_users=0)
    with pytest.raises(ConfigError, match="p_taste"):
        generate(p_taste=0.9, p_sequential=0.5)
