"""A cache build killed with SIGKILL at any point: nothing corrupt is ever read, no temporary
file outlives the next start, and the split finally prepared equals an uninterrupted build's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from recsys.data import cache
from recsys.data.pipeline import build, cache_path
from recsys.files import TEMP_PATTERN
from tests.conftest import compose_config

PARTS = ("train", "val", "test")


def same_split(a, b) -> bool:
    for part in PARTS:
        x, y = getattr(a, part), getattr(b, part)
        for col in ("user", "item", "time", "rating"):
            u, v = getattr(x, col), getattr(y, col)
            if (u is None) != (v is None) or (u is not None and not np.array_equal(u, v)):
                return False
    return (
        a.train.user_ids.tolist() == b.train.user_ids.tolist()
        and a.train.item_ids.tolist() == b.train.item_ids.tolist()
    )


@pytest.fixture
def log_setup(tmp_path):
    rng = np.random.default_rng(0)
    n = 150_000
    users = rng.integers(0, 3000, n)
    items = rng.integers(0, 800, n)
    ts = rng.integers(1_000_000, 2_000_000, n)
    log = tmp_path / "log.csv"
    with open(log, "w") as f:
        f.write("uid,sku,ts\n")
        f.writelines(f"u{u},{i:05d},{t}\n" for u, i, t in zip(users, items, ts, strict=True))
    overrides = [
        "data=csv",
        f"data.path={log}",
        "data.columns.user=uid",
        "data.columns.item=sku",
        "data.columns.time=ts",
        "data.split=random",
        "data.split_seed=0",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    cfg = OmegaConf.to_container(compose_config("data_cli", overrides).data, resolve=True)
    return tmp_path, overrides, cfg


def start(overrides, cwd, code: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recsys.cli.data", "prepare", *overrides]
    if code is not None:  # the same command, with a hook installed first
        cmd = [sys.executable, "-c", code, "prepare", *overrides]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def left_behind(cache_dir, key: str) -> tuple[list[str], list[str]]:
    """What a killed build left: temporary files, and complete cache files (each must load with
    its key: a half-written file under the final name would fail here)."""
    temps, complete = [], []
    for p in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if TEMP_PATTERN.match(p.name):
            temps.append(p.name)
        elif p.suffix == ".npz":
            assert cache.load(p, key) is not None, f"{p.name} is not a complete cache file"
            complete.append(p.name)
        else:
            pytest.fail(f"unexpected file {p.name} in the cache directory")
    return temps, complete


def next_start(overrides, cwd, cache_dir, key, reference) -> None:
    """Run again: it succeeds, never reads a corrupt file, leaves no temporary file, and the
    cached split equals the uninterrupted build."""
    r = start(overrides, cwd)
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert "unreadable or stale" not in err and "Traceback" not in err
    temps, complete = left_behind(cache_dir, key)
    assert temps == [] and len(complete) == 1
    hit = cache.load(cache_dir / complete[0], key)
    assert hit is not None and same_split(hit[0], reference)


@pytest.mark.slow
def test_a_cache_build_killed_at_random_points(log_setup):
    cwd, overrides, cfg = log_setup
    path, key = cache_path(cfg, 0)
    cache_dir = path.parent
    reference = build(cfg, 0)  # uninterrupted, in memory, without the cache

    t0 = time.perf_counter()
    first = start(overrides, cwd)
    out, err = first.communicate(timeout=300)
    duration = time.perf_counter() - t0
    assert first.returncode == 0, err
    assert f"cached at {path}" in out  # the command and this test agree on the key
    assert same_split(cache.load(path, key)[0], reference)

    rng = random.Random(0)
    for _trial in range(6):
        path.unlink()
        p = start(overrides, cwd)
        time.sleep(rng.uniform(0.2, 1.1) * duration)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        left_behind(cache_dir, key)  # a complete cache file or temporaries, nothing else
        next_start(overrides, cwd, cache_dir, key, reference)

    # and one kill at the worst moment: inside the atomic write, the temporary file complete and
    # synced but not yet renamed
    hook = (
        "import os, sys, time\n"
        "import recsys.files as f\n"
        "def fsync(fd):\n"
        "    os.fsync(fd)\n"
        "    print('synced', flush=True)\n"
        "    time.sleep(600)\n"
        "f.os = type(sys)('os_hooked')\n"
        "f.os.__dict__.update(os.__dict__)\n"
        "f.os.fsync = fsync\n"
        "sys.argv = ['recsys-data', *sys.argv[1:]]\n"
        "from recsys.cli.data import main\n"
        "main()\n"
    )
    path.unlink()
    p = start(overrides, cwd, code=hook)
    assert p.stdout.readline().strip() == "synced"
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    temps, complete = left_behind(cache_dir, key)
    assert len(temps) == 1 and complete == []  # the killed writer's file, under its own name
    assert int(TEMP_PATTERN.match(temps[0])["pid"]) == p.pid
    next_start(overrides, cwd, cache_dir, key, reference)
    assert not os.path.exists(cache_dir / temps[0])
