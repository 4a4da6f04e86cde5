"""Per-group metrics weight back to the overall metric; popularity-bias metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.metrics.beyond import (
    activity_labels,
    average_popularity,
    gini,
    group_means,
    list_metrics,
)
from recsys.training.slices import activity_names, labels_for
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config, shared_datasets


def test_gini_hand_worked():
    assert gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n - 1) / n
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # mean |xi - xj| / (2 mean) = 1 / 4


def test_coverage_gini_and_arp_of_top_lists():
    top = torch.tensor([[0, 1], [0, 2], [0, 1]])  # 3 users, K = 2, catalogue of 5
    out = list_metrics(top, num_items=5, ks=[1, 2])
    assert out["coverage@1"] == pytest.approx(1 / 5)
    assert out["coverage@2"] == pytest.approx(3 / 5)
    assert out["gini@2"] == pytest.approx(gini(np.array([3, 2, 1, 0, 0])))
    arp = average_popularity(top, torch.tensor([10.0, 4.0, 2.0, 1.0, 0.0]), [1, 2])
    np.testing.assert_allclose(arp["arp@1"].numpy(), [10, 10, 10])
    np.testing.assert_allclose(arp["arp@2"].numpy(), [7, 6, 7])


def test_activity_buckets_and_group_means():
    assert activity_names([5, 20]) == ["cold", "light", "heavy"]
    assert activity_names([3]) == ["0-2", ">=3"]
    labels = activity_labels(np.array([1, 4, 5, 19, 20, 100]), [5, 20], activity_names([5, 20]))
    assert labels.tolist() == ["cold", "cold", "light", "light", "heavy", "heavy"]
    per_user = {"user": np.arange(6), "ndcg@10": np.array([0.0, 1.0, 0.5, 0.5, 0.2, 0.4])}
    g = group_means(per_user, labels, ["cold", "light", "heavy"])
    assert list(g) == ["cold", "light", "heavy"]
    assert g["cold"] == {"n_users": 2, "ndcg@10": 0.5}
    assert g["heavy"]["ndcg@10"] == pytest.approx(0.3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from recsys.training.train import train

    out = tmp_path_factory.mktemp("sliced") / "run"
    overrides = (
        TINY_DATA
        + FAST_TRAINER[:-1]
        + ["~logger", "trainer.max_epochs=1", "eval.groups.activity=[8,20]"]
    )
    return train(compose_config("train", overrides, out)), out


def test_group_metrics_weight_back_to_the_overall_metric(run):
    metrics, _ = run
    groups = metrics["test_by_group"]["activity"]
    assert list(groups) == ["cold", "light", "heavy"]
    n = sum(g["n_users"] for g in groups.values())
    assert n == metrics["data"]["n_users"]  # leave-one-out: every user is tested
    for key in ("ndcg@10", "recall@20", "mrr@10", "arp@10"):
        weighted = sum(g["n_users"] * g[key] for g in groups.values()) / n
        assert weighted == pytest.approx(metrics["test"][key], rel=1e-9)
    # the baseline row is sliced the same way
    assert set(metrics["baseline"]["test_by_group"]["activity"]) == set(groups)
    # popularity bias next to accuracy; the popularity baseline recommends more popular items
    for key in ("coverage@10", "gini@10", "arp@10"):
        assert key in metrics["test"]
    assert metrics["baseline"]["test"]["arp@10"] > metrics["test"]["arp@10"]
    assert metrics["baseline"]["test"]["coverage@10"] < metrics["test"]["coverage@10"]


def test_segments_file_slicing_through_recsys_eval(run, tmp_path):
    from recsys.training.evaluate import evaluate_checkpoint

    metrics, out = run
    seg = tmp_path / "segments.csv"
    seg.write_text(
        "user,segment\n" + "".join(f"{u},{'odd' if u % 2 else 'even'}\n" for u in range(1, 301))
    )
    m = evaluate_checkpoint(str(out / "checkpoints" / "best.ckpt"), groups={"segments": str(seg)})
    groups = m["test_by_group"]["segment"]
    assert set(groups) == {"odd", "even"}
    n = sum(g["n_users"] for g in groups.values())
    assert sum(g["n_users"] * g["ndcg@10"] for g in groups.values()) / n == pytest.approx(
        m["test"]["ndcg@10"]
    )
    assert m["test_by_group"]["activity"] == metrics["test_by_group"]["activity"]


@pytest.mark.data
@pytest.mark.skipif(shared_datasets() is None, reason="needs the shared datasets")
def test_movielens_user_attributes_as_groups():
    root = shared_datasets()
    cfg = {"root": str(root), "folder": "ml-100k", "name": "ml-100k"}
    ids = np.array([1, 2, 3, 943])
    got = labels_for({"attribute": "gender"}, np.arange(4), ids, np.zeros(4), cfg)
    assert got["gender"][0].tolist() == ["M", "F", "M", "M"]
    occ = labels_for({"attribute": "occupation"}, np.arange(4), ids, np.zeros(4), cfg)[
        "occupation"
    ][0]
    assert occ.tolist()[:3] == ["technician", "other", "writer"]


def test_compare_shows_groups_and_flags_significantly_worse_ones(run, tmp_path):
    from recsys.training.compare import compare, to_markdown
    from recsys.training.train import train

    _, mf_dir = run
    pop_dir = tmp_path / "pop"
    overrides = (
        TINY_DATA + FAST_TRAINER[:-1] + ["~logger", "model=pop", "eval.groups.activity=[8,20]"]
    )
    train(compose_config("train", overrides, pop_dir))
    result = compare([str(mf_dir), str(pop_dir)], ["test/ndcg@10"], baseline="popularity")
    table = result["by_group"]["activity"]
    assert table["groups"] == ["cold", "light", "heavy"]
    assert sum(table["sizes"].values()) == 300
    mf_row = next(r for r in table["rows"] if not r["baseline"])
    pop_row = next(r for r in table["rows"] if r["baseline"])
    assert pop_row["worse"] == []
    # group means weight back to the row's overall mean
    overall = next(r for r in result["rows"] if not r["baseline"])["test/ndcg@10"][0]
    weighted = sum(table["sizes"][g] * mf_row["mean"][g] for g in table["groups"]) / 300
    assert weighted == pytest.approx(overall, rel=1e-6)
    # flagged exactly where the adjusted p is small and the row is below the baseline
    for g in table["groups"]:
        below = mf_row["mean"][g] < pop_row["mean"][g]
        assert (g in mf_row["worse"]) == (below and mf_row["p_holm"][g] < 0.05)
    # one epoch of MF on 300 users are far below popularity: flagged in some group
    assert mf_row["worse"]
    md = to_markdown(result)
    assert "Per activity group" in md and "▼" in md
