"""data.split=cold_items end to end: the cold / warm metrics in metrics.json, TensorBoard and
per_user_test.npz, and recsys-compare's paired test on the cold slice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from recsys.training.compare import compare
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

COLD = ["data.split=cold_items", "data.cold_item_ratio=0.3", "seed=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for model in ("pop", "attr_knn"):
        d = tmp_path_factory.mktemp(model)
        overrides = TINY_DATA + FAST_TRAINER + COLD + [f"model={model}"]
        out[model] = (d, train(compose_config("train", overrides, d)))
    return out


def test_metrics_json_holds_the_slices(runs):
    d, metrics = runs["attr_knn"]
    saved = json.loads((d / "metrics.json").read_text())
    for stage in ("val", "test"):
        m = saved[stage]
        for name in ("cold", "warm"):
            assert m[f"{name}/n_users"] > 0
            for key in ("recall@20", "ndcg@10", "hit@10", "mrr@20"):
                assert 0.0 <= m[f"{name}/{key}"] <= 1.0
    audit = saved["data"]["audit"]
    assert audit["ok"] and audit["cold_items"]["in_train"] == 0
    assert audit["cold_items"]["validation_cold"] + audit["cold_items"]["test_cold"] == round(
        0.3 * saved["data"]["n_items"]
    )
    # the baseline row is sliced too; the user groups hold the overall metrics only
    assert "cold/recall@20" in saved["baseline"]["test"]
    for groups in saved["test_by_group"].values():
        for values in groups.values():
            assert not [k for k in values if "/" in k]
            assert all(math.isfinite(v) for v in values.values())


def test_per_user_slices_reproduce_the_means(runs):
    d, metrics = runs["attr_knn"]
    with np.load(d / "per_user_test.npz") as z:
        pu = {k: z[k] for k in z.files}
    for name in ("cold", "warm"):
        v = pu[f"{name}/recall@20"]
        assert len(v) == len(pu["user"])
        present = ~np.isnan(v)
        assert present.sum() == metrics["test"][f"{name}/n_users"]
        assert v[present].mean() == pytest.approx(metrics["test"][f"{name}/recall@20"])
    # every evaluated user has a target in one slice at least
    assert (~np.isnan(pu["cold/recall@20"]) | ~np.isnan(pu["warm/recall@20"])).all()


def test_slices_reach_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d, metrics = runs["attr_knn"]
    ea = EventAccumulator(str(next((d / "tensorboard").rglob("events.out.tfevents.*")).parent))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"test/cold/recall@20", "test/warm/ndcg@10"} <= scalars
    value = ea.Scalars("test/cold/recall@20")[-1].value
    assert value == pytest.approx(metrics["test"]["cold/recall@20"], rel=1e-6)


def test_compare_pairs_users_on_the_cold_slice(runs):
    paths = [str(runs[m][0]) for m in ("pop", "attr_knn")]
    result = compare(paths, ["test/cold/recall@20"], baseline="popularity")
    rows = {r["label"].split()[0]: r for r in result["rows"]}
    assert rows["popularity"]["baseline"]
    row = rows["attributeknn"]  # labels: the class name, lower case

    # reference: the users with a cold test target, paired, straight from the two npz files
    def cold_values(d: Path) -> dict[int, float]:
        with np.load(d / "per_user_test.npz") as z:
            v, u = z["cold/recall@20"], z["user"]
        return dict(zip(u[~np.isnan(v)].tolist(), v[~np.isnan(v)].tolist(), strict=True))

    a, b = cold_values(runs["attr_knn"][0]), cold_values(runs["pop"][0])
    users = sorted(set(a) & set(b))
    assert row["n_users"] == len(users) == runs["pop"][1]["test"]["cold/n_users"]
    x, y = np.array([a[u] for u in users]), np.array([b[u] for u in users])
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert row["test/cold/recall@20"][0] == pytest.approx(x.mean())
    assert row["p_ttest"] < 0.01 and x.mean() > y.mean()  # attributes rank cold items


def test_recsys_eval_reproduces_the_slices(runs, tmp_path):
    """The checkpoint of a feature-aware closed-form model rebuilds from its stored schema and
    re-evaluates to the run's cold and warm metrics."""
    from recsys.training.evaluate import evaluate_checkpoint

    d, metrics = runs["attr_knn"]
    again = evaluate_checkpoint(d / "checkpoints" / "best.ckpt", tmp_path, accelerator="cpu")
    for key in ("cold/recall@20", "warm/ndcg@10", "cold/n_users", "recall@20"):
        assert again["test"][key] == pytest.approx(metrics["test"][key], rel=1e-6), key
