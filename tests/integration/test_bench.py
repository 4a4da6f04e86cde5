"""The benchmark machinery on a tiny matrix: outputs written and well-formed, skips explained,
the standalone evaluation pass agrees with the run; the scale generator; the RecBole adapter's
data files and config translation. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from benchmarks.runner.recbole import recbole_config, write_atomic
from benchmarks.runner.scale import scale_source
from recsys.data.pipeline import prepare
from tests.conftest import compose_config

pytestmark = pytest.mark.slow

TINY = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "~logger",
    "data.download=false",
    "data.n_users=150",
    "data.n_items=80",
    "data.mean_length=15",
    "data.n_groups=4",
]


def test_quick_bench_on_a_tiny_matrix(tmp_path):
    matrix = {
        "common": TINY,
        "entries": [
            {
                "name": "mf-tiny",
                "model": "mf",
                "data": "synthetic",
                "overrides": ["trainer.max_epochs=2"],
            },
            {"name": "pop-tiny", "model": "pop", "data": "synthetic"},
            {"name": "nosuch-tiny", "model": "no_such_model", "data": "synthetic"},
            {"name": "mf-ml-100k", "model": "mf", "data": "ml-100k"},
        ],
    }
    (tmp_path / "m.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(matrix)))
    empty = tmp_path / "empty_root"
    empty.mkdir()
    env = {**os.environ, "RECSYS_DATA_DIR": str(empty), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.runner",
            "--matrix",
            str(tmp_path / "m.yaml"),
            "--out",
            str(tmp_path / "out"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--peak-n",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skip nosuch-tiny: no model config" in proc.stdout
    assert "skip mf-ml-100k: dataset files" in proc.stdout

    report = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert report["matmul_peak"]["gflops"] > 0
    assert {"cpu", "cores", "versions", "load_avg"} <= set(report["machine"])
    assert report["machine"]["versions"]["torch"]
    assert [s["name"] for s in report["skipped"]] == ["nosuch-tiny", "mf-ml-100k"]
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {"mf-tiny", "pop-tiny"}
    for name, r in by_name.items():
        assert r["status"] == "ok", r
        run_metrics = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert r["test"] == run_metrics["test"]
        e = r["eval"]
        assert e["users"] == r["data_summary"]["n_test"] > 0  # leave-one-out: one target per user
        assert e["items"] == r["data_summary"]["n_items"]
        assert e["full_pass_s"] > 0 and e["users_per_s"] > 0
        # the bench's own evaluation pass reproduces the run's test metrics
        for k in ("ndcg@10", "recall@20", "mrr@10"):
            assert e["test_check"][k] == pytest.approx(r["test"][k], abs=1e-6), (name, k)
        assert r["peak_rss_mb"] > 50
    mf, pop = by_name["mf-tiny"], by_name["pop-tiny"]
    assert mf["timing"]["epochs"] == 2
    assert mf["samples_per_epoch"] == mf["data_summary"]["n_train"]  # every training pair once
    assert mf["train_throughput"] > 0 and mf["timing"]["train_s_per_epoch"] > 0
    assert 0 < mf["eval"]["score_peak_fraction"]
    assert pop["timing"]["epochs"] == 0 and "score_gflops" not in pop["eval"]

    md = (tmp_path / "out" / "matrix.md").read_text()
    assert md.startswith("# Benchmarks")
    assert "| mf-tiny |" in md and "| pop-tiny |" in md
    assert "## Skipped" in md and "nosuch-tiny" in md
    assert "python -m recsys.cli.train model=mf data=synthetic" in md


def test_scale_source_is_unique_and_near_the_target():
    # MovieLens-1M's density (4.5%)
    cfg = {
        "scale_users": 400,
        "scale_items": 1000,
        "scale_interactions": 18_000,
        "scale_min_length": 20,
    }
    df = scale_source(cfg)
    assert not df.duplicated(["user", "item"]).any()
    assert df["user"].nunique() == 400 and df["item"].max() <= 1000
    assert abs(len(df) - 18_000) < 0.1 * 18_000
    counts = df.groupby("user").size()
    assert counts.min() >= 10 and counts.max() <= 500
    # Zipf popularity: the top 10% of items hold far more than 10% of the events
    top = df["item"].value_counts().iloc[:100].sum()
    assert top > 0.25 * len(df)
    # and the frame goes through the normal pipeline
    data = OmegaConf.to_container(
        compose_config(
            "train",
            [
                "data.source=benchmarks.runner.scale.scale_source",
                "+data.scale_users=400",
                "+data.scale_items=1000",
                "+data.scale_interactions=18000",
                "data.cache=false",
            ],
        ).data,
        resolve=True,
    )
    split = prepare(data, seed=0)
    assert split.n_users == 400 and len(split.test) == 400


def test_recbole_adapter_writes_our_split_and_our_settings(tmp_path):
    cfg = compose_config(
        "train",
        [
            "model=mf",
            "data.n_users=120",
            "data.n_items=60",
            "data.mean_length=12",
            "data.split=random",
            "optim.lr=0.003",
            "data.batch_size=512",
            "trainer.max_epochs=7",
            "eval.monitor='val/mrr@10'",
        ],
        tmp_path,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    split = prepare(config["data"], seed=config["seed"])
    sizes = write_atomic(split, tmp_path / "general", "d", sequential=False)
    assert sizes == {"train": len(split.train), "valid": len(split.val), "test": len(split.test)}
    for suffix, part in (("train", split.train), ("valid", split.val), ("test", split.test)):
        path = tmp_path / "general" / f"d.{suffix}.inter"
        assert path.read_text().splitlines()[0] == "user_id:token\titem_id:token\ttimestamp:float"
        rows = np.loadtxt(path, skiprows=1, dtype=np.int64, ndmin=2)
        assert sorted(map(tuple, rows[:, :2] - 1)) == sorted(zip(part.user, part.item, strict=True))

    # sequential (leave-one-out): one file whose time order puts each user's test event last
    # and validation event second to last, so RecBole's LS split cuts exactly our split
    loo = prepare({**config["data"], "split": "leave_one_out"}, seed=config["seed"])
    write_atomic(loo, tmp_path / "seq", "d", sequential=True)
    rows = np.loadtxt(tmp_path / "seq" / "d.inter", skiprows=1, dtype=np.int64, ndmin=2)
    assert len(rows) == len(loo.train) + len(loo.val) + len(loo.test)
    events: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in rows:
        events.setdefault(int(u), []).append((int(t), int(i)))
    test_item = dict(zip((loo.test.user + 1).tolist(), (loo.test.item + 1).tolist(), strict=True))
    val_item = dict(zip((loo.val.user + 1).tolist(), (loo.val.item + 1).tolist(), strict=True))
    assert test_item
    for u, evs in events.items():
        evs.sort()
        assert evs[-1][1] == test_item[u]
        if u in val_item:
            assert evs[-2][1] == val_item[u]

    rb = recbole_config(config, "BPR", {})
    assert rb["learning_rate"] == 0.003 and rb["train_batch_size"] == 512
    assert rb["epochs"] == 7 and rb["valid_metric"] == "MRR@10"
    assert rb["embedding_size"] == config["model"]["embedding_size"]
    assert rb["topk"] == config["eval"]["topk"]
    assert recbole_config(config, "BPR", {"epochs": 2})["epochs"] == 2
