"""``recsys-data`` end to end: stats and audit on stdout, the cache reused across invocations,
bad data refused with one ``error:`` line and exit status 2, and the audit in metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recsys.cli.data import run
from recsys.errors import ConfigError
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config, shared_datasets


def recsys_data(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli.data", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def write_ml100k(root) -> int:
    rows = [
        (u, i, 1 + (u + i) % 5, 100 * u + i)
        for u in range(1, 31)
        for i in range(1, 21)
        if (u + i) % 3
    ]
    (root / "ml-100k").mkdir(parents=True)
    (root / "ml-100k" / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    )
    assert len({r[0] for r in rows}) == 30 and len({r[1] for r in rows}) == 20
    return len(rows)


@pytest.mark.slow
def test_stats_prepare_and_cache_reuse(tmp_path):
    n = write_ml100k(tmp_path / "root")
    (tmp_path / "root" / "ml-100k" / "u.user").write_text(  # 29 of the 30 users, + 1 unknown
        "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|writer|00000\n" for u in range(2, 32))
    )
    args = ["data=ml-100k", f"data.root={tmp_path / 'root'}"]
    first = recsys_data("stats", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "users: 30\n" in out and "items: 20\n" in out and f"interactions: {n}\n" in out
    for needle in (
        "density:",
        "history length: min",
        "item popularity gini:",
        "split (leave_one_out): train",
        "pair overlap: train/val 0, train/test 0, val/test 0",
        "cold in test: 0 users",
        "user features (u.user): 29 of 30 users with a row (1 rows match none); age 5 values, "
        "gender 2 values, occupation 1 values; vocabularies from train only: yes",
        "leak-free: yes",
    ):
        assert needle in out
    assert "reusing" not in first.stderr
    cache_files = list((tmp_path / "root" / "cache").glob("ml-100k-*.npz"))
    assert len(cache_files) == 1

    second = recsys_data("prepare", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"reusing cached ml-100k split {cache_files[0]}" in second.stderr
    assert f"cached at {cache_files[0]}" in second.stdout

    as_json = recsys_data("stats", *args, "json=true", "data.split=temporal", cwd=tmp_path)
    stats = json.loads(as_json.stdout)
    assert stats["users"] == 30 and stats["interactions"] == n
    assert stats["audit"]["temporal"]["train_after_first_test"] == 0 and stats["audit"]["ok"]
    assert len(list((tmp_path / "root" / "cache").glob("ml-100k-*.npz"))) == 2  # new key
    assert not (tmp_path / "outputs").exists()  # the command writes no run directory


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "1\t2\t3\t4\n1\t3\tx\t5\n",
            "u.data: line 2: column 'rating' (rating) must be a number, got 'x'",
        ),
        (None, "missing u.data in"),
    ],
)
def test_bad_data_one_error_line_exit_2(tmp_path, content, message):
    (tmp_path / "ml-100k").mkdir()
    if content is not None:
        (tmp_path / "ml-100k" / "u.data").write_text(content)
    r = recsys_data(
        "stats", "data=ml-100k", f"data.root={tmp_path}", "data.download=false", cwd=tmp_path
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npz"))


@pytest.mark.slow
def test_usage_without_command(tmp_path):
    r = recsys_data(cwd=tmp_path)
    assert r.returncode == 2 and "usage: recsys-data {stats,prepare}" in r.stderr
    h = recsys_data("--help", cwd=tmp_path)
    assert h.returncode == 0 and "recsys-data stats data=<name>" in h.stdout
    assert "amazon-sports" in h.stdout and "csv" in h.stdout


@pytest.mark.data
@pytest.mark.skipif(shared_datasets() is None, reason="shared datasets absent")
def test_beauty_statistics_from_shared_copy(tmp_path):
    root = shared_datasets()
    if not (root / "beauty" / "Beauty.txt").is_file():
        pytest.skip("Beauty.txt absent")
    r = recsys_data(
        "stats",
        "data=amazon-beauty",
        f"data.root={root}",
        f"data.cache_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "users: 22363\n" in r.stdout and "items: 12101\n" in r.stdout
    assert "interactions: 198502\n" in r.stdout


def test_metrics_json_carries_the_audit(tmp_path):
    cfg = compose_config("train", [*TINY_DATA, *FAST_TRAINER, "model=pop"], tmp_path)
    metrics = train(cfg)
    stored = json.loads((tmp_path / "metrics.json").read_text())
    audit = stored["data"]["audit"]
    assert audit == metrics["data"]["audit"]
    assert audit["pair_overlap"] == {"train_val": 0, "train_test": 0, "val_test": 0}
    assert audit["split"] == cfg.data.split and audit["popularity_statistics"] == "train"


@pytest.mark.parametrize(
    "args, message",
    [
        (["data=csv"], "data.path must be set for this dataset (add data.path=...)"),
        (["data=atomic"], "data.name must be set for this dataset (add data.name=...)"),
    ],
)
def test_mandatory_keys_are_named(args, message):
    with pytest.raises(ConfigError) as e:
        run(compose_config("data_cli", ["command=stats", *args]))
    assert str(e.value) == message
