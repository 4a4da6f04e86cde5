"""The split cache: reused with a notice, rebuilt when the key changes or the file is corrupt,
written atomically, and placed in a writable directory when the data root is read-only."""

from __future__ import annotations

import os

import numpy as np
import pytest

from recsys.data import cache, sources
from recsys.data.pipeline import build, cache_path, prepare

ROWS = [
    (u, i, 1 + (u * i) % 5, 1000 * u + 10 * i)
    for u in range(1, 21)
    for i in range(1, 16)
    if (u + i) % 3
]


def write_ml100k(root, rows=ROWS) -> None:
    (root / "ml-100k").mkdir(parents=True, exist_ok=True)
    (root / "ml-100k" / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    )


def cfg(root, **kw) -> dict:
    base = {
        "name": "ml-100k",
        "source": "recsys.data.sources.load_ml100k",
        "root": str(root),
        "cache_dir": None,
        "folder": "ml-100k",
        "files": ["u.data"],
        "download": False,
        "split": "leave_one_out",
        "batch_size": 64,
    }
    return {**base, **kw}


def same_split(a, b) -> bool:
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        for col in ("user", "item", "time", "rating"):
            if not np.array_equal(getattr(x, col), getattr(y, col)):
                return False
    return np.array_equal(a.train.user_ids, b.train.user_ids) and np.array_equal(
        a.train.item_ids, b.train.item_ids
    )


def test_reuse_with_one_line_notice(tmp_path, capsys, monkeypatch):
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    first = prepare(c, seed=0)
    path, _ = cache_path(c, 0)
    assert path.is_file() and path.parent == tmp_path / "cache"
    assert "reusing" not in capsys.readouterr().err

    def boom(_cfg):
        raise AssertionError("the raw file must not be parsed on a cache hit")

    monkeypatch.setattr(sources, "load_ml100k", boom)
    second = prepare(c, seed=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"data: reusing cached ml-100k split {path}"]
    assert same_split(first, second)
    assert second.audit == first.audit and second.audit["ok"]
    # batch size and the data root's cache location do not change the data: same entry
    assert cache_path(cfg(tmp_path, batch_size=7), 0)[0] == path


@pytest.mark.parametrize(
    "change",
    [
        {"min_user_interactions": 3},
        {"rating_threshold": 4},
        {"dedup": False},
        {"split": "temporal"},
    ],
)
def test_key_changes_with_every_data_value(tmp_path, change):
    write_ml100k(tmp_path)
    before = cache_path(cfg(tmp_path), 0)[0]
    assert cache_path(cfg(tmp_path, **change), 0)[0] != before


def test_seed_is_part_of_the_key_only_for_random_splits(tmp_path):
    write_ml100k(tmp_path)
    loo = [cache_path(cfg(tmp_path), s)[0] for s in (0, 1)]
    assert loo[0] == loo[1]
    rnd = [cache_path(cfg(tmp_path, split="random"), s)[0] for s in (0, 1)]
    assert rnd[0] != rnd[1]
    fixed = [cache_path(cfg(tmp_path, split="random", split_seed=5), s)[0] for s in (0, 1)]
    assert fixed[0] == fixed[1]


def test_raw_file_change_rebuilds(tmp_path, capsys):
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    prepare(c, 0)
    old = cache_path(c, 0)[0]
    rows = ROWS[:-5]
    write_ml100k(tmp_path, rows)
    new = cache_path(c, 0)[0]
    assert new != old
    capsys.readouterr()
    split = prepare(c, 0)
    assert "reusing" not in capsys.readouterr().err
    assert len(split.train) + len(split.val) + len(split.test) == len(rows)


def test_same_size_edit_with_restored_mtime_rebuilds(tmp_path, capsys):
    """An edit that keeps the file's size, with its modification time put back (os.utime, as
    rsync -t or a restore from backup does), still changes the key: the key hashes the bytes."""
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    first = prepare(c, 0)
    raw = tmp_path / "ml-100k" / "u.data"
    st = raw.stat()
    text = raw.read_text()
    edited = "9" + text[1:]  # the first event's user 1 becomes user 9: same size
    assert edited != text and len(edited) == len(text)
    raw.write_text(edited)
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert raw.stat().st_size == st.st_size and raw.stat().st_mtime_ns == st.st_mtime_ns
    capsys.readouterr()
    second = prepare(c, 0)
    err = capsys.readouterr().err
    assert "reusing" not in err
    assert not same_split(first, second)
    assert same_split(second, build(c, 0))
    assert len(list((tmp_path / "cache").glob("ml-100k-*.npz"))) == 2
    assert not (tmp_path / "cache" / "file-hashes.json").exists()  # no memo is written


def test_old_hash_memo_is_ignored(tmp_path, capsys):
    """A file-hashes.json of an earlier version (which could be wrong) changes nothing."""
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    (tmp_path / "cache").mkdir()
    memo = tmp_path / "cache" / "file-hashes.json"
    memo.write_text('{"anything": "0000"}')
    key = cache_path(c, 0)[1]
    memo.write_text("not json")
    assert cache_path(c, 0)[1] == key and memo.read_text() == "not json"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_cache_is_rebuilt(tmp_path, capsys, damage):
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    fresh = prepare(c, 0)
    path = cache_path(c, 0)[0]
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flip":
        mid = len(raw) // 3
        raw[mid : mid + 16] = bytes(255 - b for b in raw[mid : mid + 16])
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(b"not a cache")
    capsys.readouterr()
    again = prepare(c, 0)
    assert f"cache file {path} is unreadable or stale; rebuilding it" in capsys.readouterr().err
    assert same_split(fresh, again)
    assert cache.load(path, cache_path(c, 0)[1]) is not None  # rewritten, readable


def test_write_is_atomic(tmp_path, monkeypatch):
    write_ml100k(tmp_path)
    c = cfg(tmp_path)
    path = cache_path(c, 0)[0]

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted in the middle of writing

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(c, 0)
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_read_only_root_falls_back_to_working_dir(tmp_path, monkeypatch, capsys):
    root = tmp_path / "shared"
    write_ml100k(root)
    root.chmod(0o555)
    (root / "ml-100k").chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        split = prepare(cfg(root), 0)
        path = cache_path(cfg(root), 0)[0]
        assert path.parent.resolve() == (work / "data" / "cache").resolve() and path.is_file()
        assert not (root / "cache").exists()
        prepare(cfg(root), 0)
        assert "reusing" in capsys.readouterr().err
        # an explicit cache_dir wins
        explicit = tmp_path / "mine"
        prepare(cfg(root, cache_dir=str(explicit)), 0)
        assert len(list(explicit.glob("ml-100k-*.npz"))) == 1
    finally:
        (root / "ml-100k").chmod(0o755)
        root.chmod(0o755)
    assert split.audit is not None


def test_cache_disabled_and_sources_without_files(tmp_path):
    write_ml100k(tmp_path)
    assert cache_path(cfg(tmp_path, cache=False), 0) is None
    synthetic = {"name": "synthetic", "source": "recsys.data.synthetic.load", "root": str(tmp_path)}
    assert cache_path(synthetic, 0) is None


def test_string_ids_round_trip_without_pickle(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"u{u}\ti{i}\t{u * 10 + i}\n" for u in range(6) for i in range(5))
    )
    c = {
        "name": "d",
        "source": "recsys.data.sources.load_atomic",
        "root": str(tmp_path),
        "folder": "d",
        "files": ["d.inter"],
        "fields": {"user": "user_id", "item": "item_id", "time": "timestamp"},
        "split": "leave_one_out",
    }
    fresh = build(c, 0)
    prepare(c, 0)
    cached = prepare(c, 0)
    assert same_split(fresh, cached)
    assert cached.train.user_ids.tolist() == [f"u{u}" for u in range(6)]


def test_ml1m_pairs_notice_is_repeated_on_a_cache_hit(tmp_path, capsys):
    import pandas as pd

    (tmp_path / "ml-1m").mkdir()
    pd.DataFrame(
        {
            "userID": [str(u) for u in range(1, 9) for _ in range(4)],
            "movieID": [str(i) for _ in range(8) for i in range(1, 5)],
        }
    ).to_parquet(tmp_path / "ml-1m" / "ratings.parquet")
    c = {
        "name": "ml-1m",
        "source": "recsys.data.sources.load_ml1m",
        "root": str(tmp_path),
        "folder": "ml-1m",
        "files": ["ratings.dat"],
        "alternative_files": ["ratings.parquet"],
        "split": "random",
        "split_seed": 0,
    }
    prepare(c, 0)
    first = capsys.readouterr().err.strip().splitlines()
    prepare(c, 0)
    second = capsys.readouterr().err.strip().splitlines()
    assert len(first) == 1 and "implicit (user, movie) pairs" in first[0]
    assert second[0] == first[0] and second[1].startswith("data: reusing cached ml-1m split")
