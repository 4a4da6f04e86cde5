"""The cold-start baselines (PopularityInCategory, AttributeKNN) against brute-force numpy
references on a hand-made attribute table, and on a planted attribute signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.batches import UserBatch
from recsys.data.features import FeatureTable, Field, SplitFeatures
from recsys.errors import ConfigError
from recsys.models.attr_knn import AttributeKNN
from recsys.models.base import build_model
from recsys.models.pop_category import PopularityInCategory
from tests.conftest import TINY_DATA, compose_config

# 8 items; "cat" is multi-valued (values a, b, c), "brand" single-valued (x, y). Item 7 has no
# attribute; item 6 is a cold item (no training event) with item 0's attributes.
CAT = [["a"], ["a", "b"], ["b"], ["c"], ["a", "c"], ["b"], ["a"], []]
BRAND = [["x"], ["y"], ["x"], ["y"], ["x"], [], ["x"], []]
N_USERS, N_ITEMS = 5, len(CAT)
# training events (user, item), with a repeat: counts are events
EVENTS = [(0, 0), (0, 1), (0, 1), (1, 2), (1, 5), (1, 3), (2, 0), (2, 4), (3, 3), (4, 1), (4, 2)]


def field_codes(values: list[list[str]]) -> tuple[Field, np.ndarray]:
    vocab = sorted({v for row in values for v in row})
    width = max(len(r) for r in values)
    codes = np.zeros((len(values), width), dtype=np.int64)
    for i, row in enumerate(values):
        codes[i, : len(row)] = sorted(vocab.index(v) + 1 for v in row)
    return Field("x", "categorical", tuple(vocab), width), codes


def split_features(fields: dict[str, list[list[str]]]) -> SplitFeatures:
    made = {name: field_codes(v) for name, v in fields.items()}
    table = FeatureTable(
        entity="item",
        fields=tuple(
            Field(name, "categorical", f.vocab, f.width) for name, (f, _) in sorted(made.items())
        ),
        codes={name: c for name, (_, c) in made.items()},
        values={},
        present=np.ones(N_ITEMS, dtype=bool),
    )
    seen = np.zeros(N_ITEMS, dtype=bool)
    seen[[i for _, i in EVENTS]] = True
    return SplitFeatures(table, None, seen, np.ones(N_USERS, dtype=bool))


def train_matrix() -> torch.Tensor:
    idx = torch.tensor(EVENTS).T
    return torch.sparse_coo_tensor(
        idx, torch.ones(len(EVENTS)), (N_USERS, N_ITEMS), check_invariants=False
    ).coalesce()


def fitted(cls, feats: SplitFeatures, **kw):
    model = cls(N_USERS, N_ITEMS, feature_schema=feats.schema(), **kw)
    model.set_features(feats)
    model.fit(train_matrix())
    return model.eval()


HISTORIES = [[0, 1], [2, 5, 3], [], [3], [1, 2, 4, 7]]


def scores(model, histories=HISTORIES) -> np.ndarray:
    with torch.no_grad():
        s = model.score(UserBatch.from_lists(list(range(len(histories))), histories))
    return s.double().numpy()


def pop_category_reference(smoothing: float, item_weight: float) -> np.ndarray:
    """score(u, i) by the formula, item by item and category by category."""
    n = np.zeros(N_ITEMS)
    for _, i in EVENTS:
        n[i] += 1
    cats = sorted({c for row in CAT for c in row})
    share = {c: sum(n[i] / len(CAT[i]) for i in range(N_ITEMS) if c in CAT[i]) for c in cats}
    total = sum(share.values())
    g = {c: share[c] / total for c in cats}
    pop = {
        c: sum(n[i] for i in range(N_ITEMS) if c in CAT[i])
        / sum(1 for i in range(N_ITEMS) if c in CAT[i])
        for c in cats
    }
    top = max(pop.values())
    # a cold item's popularity term: the mean over its categories of their warm items' mean
    per_warm = {
        c: sum(n[i] for i in range(N_ITEMS) if c in CAT[i])
        / max(1, sum(1 for i in range(N_ITEMS) if c in CAT[i] and n[i] > 0))
        for c in cats
    }
    expected = np.array(
        [
            n[i] if n[i] > 0 else (np.mean([per_warm[c] for c in CAT[i]]) if CAT[i] else 0.0)
            for i in range(N_ITEMS)
        ]
    )
    out = np.zeros((len(HISTORIES), N_ITEMS))
    for u, hist in enumerate(HISTORIES):
        h = {c: sum(1 / len(CAT[j]) for j in hist if c in CAT[j]) for c in cats}
        h_u = sum(h.values())
        p = {
            c: (h[c] + smoothing * g[c]) / (h_u + smoothing) if h_u + smoothing else g[c]
            for c in cats
        }
        for i in range(N_ITEMS):
            out[u, i] = (
                sum(p[c] * pop[c] / top for c in CAT[i])
                + item_weight * expected[i] / expected.max()
            )
    return out


@pytest.mark.parametrize(("smoothing", "item_weight"), [(10.0, 0.1), (0.0, 0.5), (2.5, 0.0)])
def test_pop_category_equals_the_formula(smoothing, item_weight):
    feats = split_features({"cat": CAT, "brand": BRAND})
    model = fitted(
        PopularityInCategory,
        feats,
        features={"item": "all"},
        field="cat",
        smoothing=smoothing,
        item_weight=item_weight,
    )
    np.testing.assert_allclose(
        scores(model), pop_category_reference(smoothing, item_weight), rtol=1e-5, atol=1e-7
    )


def test_pop_category_default_field_and_cold_items():
    feats = split_features({"cat": CAT, "brand": BRAND})
    model = fitted(PopularityInCategory, feats, features={"item": "all"})
    assert model.field == "brand"  # the first categorical field (fields are sorted by name)
    model = fitted(PopularityInCategory, feats, features={"item": ["cat"]}, item_weight=0.3)
    s = scores(model)
    # item 6 (cold) is scored by its categories alone, with their warm items' mean popularity
    np.testing.assert_allclose(s, pop_category_reference(10.0, 0.3), rtol=1e-5, atol=1e-7)
    assert (s[:, 6] > 0).all()


def attr_knn_reference(fields: dict[str, list[list[str]]], k: int) -> np.ndarray:
    """Dense TF-IDF cosine similarities, each row's top k kept (k = I - 1: all), summed over
    the history."""
    cols = [
        (name, v) for name in sorted(fields) for v in sorted({x for r in fields[name] for x in r})
    ]
    x = np.zeros((N_ITEMS, len(cols)))
    for i in range(N_ITEMS):
        for d, (name, v) in enumerate(cols):
            x[i, d] = v in fields[name][i]
    holders = x.any(1)
    n = holders.sum()
    df = x.sum(0)
    x = x * (np.log((1 + n) / (1 + df)) + 1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sim = x @ x.T
    np.fill_diagonal(sim, 0)
    if k < N_ITEMS - 1:
        for i in range(N_ITEMS):
            sim[i, np.argsort(-sim[i], kind="stable")[k:]] = 0
    out = np.zeros((len(HISTORIES), N_ITEMS))
    for u, hist in enumerate(HISTORIES):
        for i in range(N_ITEMS):
            out[u, i] = sum(sim[i, j] for j in hist)
    return out, sim


def test_attr_knn_equals_dense_tfidf_cosine():
    fields = {"cat": CAT, "brand": BRAND}
    model = fitted(AttributeKNN, split_features(fields), features={"item": "all"}, k_neighbors=50)
    assert model.k == N_ITEMS - 1
    ref, sim = attr_knn_reference(fields, N_ITEMS - 1)
    np.testing.assert_allclose(scores(model), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.similarity().to_dense().numpy(), sim, rtol=1e-5, atol=1e-6)
    # one field only
    model = fitted(AttributeKNN, split_features(fields), features={"item": ["cat"]})
    np.testing.assert_allclose(
        scores(model), attr_knn_reference({"cat": CAT}, 7)[0], rtol=1e-5, atol=1e-6
    )


def test_attr_knn_keeps_the_k_largest_similarities():
    fields = {"cat": CAT, "brand": BRAND}
    model = fitted(AttributeKNN, split_features(fields), features={"item": "all"}, k_neighbors=2)
    _, full = attr_knn_reference(fields, N_ITEMS - 1)
    kept = model.similarity().to_dense().numpy()
    for i in range(N_ITEMS):  # the values kept are the row's two largest (ties: any of them)
        assert sorted(kept[i][kept[i] > 0], reverse=True) == pytest.approx(
            [v for v in sorted(full[i], reverse=True)[:2] if v > 0]
        )
        assert set(np.flatnonzero(kept[i])) <= set(np.flatnonzero(full[i]))


def test_attr_knn_scores_a_cold_item_like_its_warm_twin():
    feats = split_features({"cat": CAT, "brand": BRAND})
    assert not feats.item_seen[6] and feats.item_seen[0]
    model = fitted(AttributeKNN, feats, features={"item": "all"})
    s = scores(model)
    for u, hist in enumerate(HISTORIES):
        if 0 not in hist and 6 not in hist:
            assert s[u, 6] == pytest.approx(s[u, 0], abs=1e-6), u
    assert s[1, 6] > 0  # a history with similar items scores it


def test_no_item_features_is_one_config_error():
    for target in (
        "recsys.models.pop_category.PopularityInCategory",
        "recsys.models.attr_knn.AttributeKNN",
    ):
        cfg = {"_target_": target, "features": {"item": "all"}}
        for schema in (None, {"item": None, "user": None}):
            with pytest.raises(ConfigError, match="the dataset has no item features") as e:
                build_model(cfg, N_USERS, N_ITEMS, feature_schema=schema)
            assert "\n" not in str(e.value)
    feats = split_features({"cat": CAT})
    with pytest.raises(ConfigError, match="model.field"):
        PopularityInCategory(N_USERS, N_ITEMS, feats.schema(), {"item": "all"}, field="nope")
    with pytest.raises(ConfigError, match="model.features"):
        AttributeKNN(N_USERS, N_ITEMS, feats.schema(), None)


def test_checkpoint_round_trip_rebuilds_from_schema():
    feats = split_features({"cat": CAT, "brand": BRAND})
    for cls, kw in ((PopularityInCategory, {"field": "cat"}), (AttributeKNN, {"k_neighbors": 3})):
        model = fitted(cls, feats, features={"item": "all"}, **kw)
        state = model.state_dict()
        cfg = {"_target_": f"{cls.__module__}.{cls.__name__}", "features": {"item": "all"}, **kw}
        again = build_model(cfg, N_USERS, N_ITEMS, feature_schema=feats.schema())
        again.load_state_dict(state)  # sized at construction: no set_features, no fit
        np.testing.assert_allclose(scores(again.eval()), scores(model))


@pytest.mark.parametrize("name", ["pop_category", "attr_knn"])
def test_planted_category_signal_beats_popularity(name, tmp_path):
    """Synthetic users mostly pick items of their taste group, which is the item's ``genre``:
    both baselines learn it beyond global popularity, on warm items and on cold items."""
    from recsys.training.runs import datamodule_from_config, evaluate, module_for

    results = {}
    for model in ("pop", name):
        extra = ["model.field=genre"] if model == "pop_category" else []
        overrides = [
            f"model={model}",
            "data=synthetic",
            *TINY_DATA,
            "data.split=cold_items",
            *extra,
        ]
        config = OmegaConf.to_container(compose_config("train", overrides, tmp_path), resolve=True)
        dm = datamodule_from_config(config)
        module = module_for(config, dm)
        module.fit_closed_form(dm.train_matrix())
        results[model] = evaluate(module, dm, "test", "cpu")[0]
    pop, got = results["pop"], results[name]
    assert got["warm/ndcg@10"] > pop["warm/ndcg@10"] + 0.02
    assert got["cold/recall@20"] > pop["cold/recall@20"] + 0.2
    assert not math.isnan(got["ndcg@10"])
