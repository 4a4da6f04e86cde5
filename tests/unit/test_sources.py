"""Every catalog format from small fixture files, the shared copies when present, and a clear
one-line DataError (file, line, column) for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.data import sources
from recsys.data.pipeline import build, cache_path, fingerprint, prepare, resolve_source
from recsys.data.sources import atomic, files, lastfm, movielens, sequences, tabular
from recsys.errors import DataError
from tests.conftest import compose_config, shared_datasets


def data_cfg(name: str, *overrides: str) -> dict:
    """The composed ``data`` group of the real config for catalog entry ``name``."""
    cfg = compose_config("data_cli", [f"data={name}", *overrides])
    return OmegaConf.to_container(cfg.data, resolve=True)


def write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


# -- each format from a fixture -------------------------------------------------------------------
def test_ml100k_fixture(tmp_path):
    write(tmp_path / "ml-100k" / "u.data", "1\t10\t5\t300\n2\t10\t3\t100\n1\t20\t4\t200\n")
    df = movielens.load_ml100k(data_cfg("ml-100k", f"data.root={tmp_path}"))
    assert df["user"].tolist() == [1, 2, 1]
    assert df["item"].tolist() == [10, 10, 20]
    assert df["rating"].tolist() == [5.0, 3.0, 4.0]
    assert df["time"].tolist() == [300.0, 100.0, 200.0]


def test_ml1m_ratings_dat_fixture(tmp_path):
    write(tmp_path / "ml-1m" / "ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
    df = movielens.load_ml1m(data_cfg("ml-1m", f"data.root={tmp_path}", "data.split=temporal"))
    assert df[["user", "item", "rating", "time"]].to_numpy().tolist() == [
        [1, 1193, 5, 978300760],
        [2, 661, 3, 978302109],
    ]


def test_ml1m_parquet_pairs_and_refusals(tmp_path, capsys):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    pd.DataFrame({"userID": ["1", "1", "2"], "movieID": ["5", "7", "5"]}).to_parquet(
        folder / "ratings.parquet"
    )
    df = movielens.load_ml1m(data_cfg("ml-1m", f"data.root={tmp_path}"))
    assert list(df.columns) == ["user", "item"]
    assert df["item"].tolist() == [5, 7, 5]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "implicit (user, movie) pairs, no ratings or timestamps" in err[0]
    for override, needs in [
        ("data.split=leave_one_out", "data.split=leave_one_out needs timestamps"),
        ("data.split=temporal", "data.split=temporal needs timestamps"),
        ("data.rating_threshold=4", "data.rating_threshold=4 needs ratings"),
    ]:
        with pytest.raises(DataError, match="only .*ratings.parquet is present") as e:
            movielens.load_ml1m(data_cfg("ml-1m", f"data.root={tmp_path}", override))
        assert needs in str(e.value) and "ratings.dat" in str(e.value)


@pytest.mark.parametrize("name", ["ml-20m", "ml-latest-small"])
def test_movielens_csv_fixture(tmp_path, name):
    folder = data_cfg(name, f"data.root={tmp_path}")["folder"]
    write(
        tmp_path / folder / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3.5,10\n4,5,4.0,20\n",
    )
    df = movielens.load_movielens_csv(data_cfg(name, f"data.root={tmp_path}"))
    assert df[["user", "item", "rating", "time"]].to_numpy().tolist() == [
        [1, 2, 3.5, 10],
        [4, 5, 4, 20],
    ]


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports", "amazon-toys", "yelp"])
def test_user_sequence_fixture(tmp_path, name):
    cfg = data_cfg(name, f"data.root={tmp_path}")
    write(tmp_path / cfg["folder"] / cfg["files"][0], "1 5 6 7\n2 6 5\n")
    df = sequences.load_user_sequences(cfg)
    assert df["user"].tolist() == [1, 1, 1, 2, 2]
    assert df["item"].tolist() == [5, 6, 7, 6, 5]
    assert df["time"].tolist() == [0, 1, 2, 0, 1]  # the position in the line is the order


def test_lastfm_fixture_with_crlf(tmp_path):
    write(
        tmp_path / "lastfm-hetrec2011-2k" / "user_artists.dat",
        b"userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t228\r\n",
    )
    df = lastfm.load_lastfm(data_cfg("lastfm", f"data.root={tmp_path}"))
    assert df[["user", "item", "rating"]].to_numpy().tolist() == [
        [2, 51, 13883],
        [2, 52, 11690],
        [3, 51, 228],
    ]
    assert "time" not in df


def test_atomic_fixture(tmp_path):
    write(
        tmp_path / "mydata" / "mydata.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti9\t4\t881250949\nu2\ti1\t3\t891717742\n",
    )
    cfg = data_cfg("atomic", f"data.root={tmp_path}", "data.name=mydata")
    assert cfg["folder"] == "mydata" and cfg["files"] == ["mydata.inter"]
    df = atomic.load_atomic(cfg)
    assert df["user"].tolist() == ["u1", "u2"] and df["item"].tolist() == ["i9", "i1"]
    assert df["rating"].tolist() == [4.0, 3.0] and df["time"].tolist() == [881250949.0, 891717742.0]


def test_atomic_without_rating_and_time(tmp_path):
    write(tmp_path / "d" / "d.inter", "user_id:token\titem_id:token\n1\t2\n3\t4\n")
    df = atomic.load_atomic(data_cfg("atomic", f"data.root={tmp_path}", "data.name=d"))
    assert list(df.columns) == ["user", "item"]


def test_csv_mapping_tsv_and_parquet(tmp_path):
    write(
        tmp_path / "log.tsv", "ts\tuid\tsku\tstars\n5\talice\tA\t1\n6\tbob\tB\t2\n7\talice\tB\t5\n"
    )
    cfg = data_cfg(
        "csv",
        f"data.path={tmp_path / 'log.tsv'}",
        "data.columns.user=uid",
        "data.columns.item=sku",
        "data.columns.time=ts",
        "data.columns.rating=stars",
    )
    df = tabular.load_csv(cfg)
    assert df["user"].tolist() == ["alice", "bob", "alice"] and df["item"].tolist() == [
        "A",
        "B",
        "B",
    ]
    assert df["time"].tolist() == [5, 6, 7] and df["rating"].tolist() == [1, 2, 5]

    pd.DataFrame({"u": [1, 2, 2], "i": [3, 3, 4]}).to_parquet(tmp_path / "log.parquet")
    df = tabular.load_csv(
        data_cfg(
            "csv",
            f"data.path={tmp_path / 'log.parquet'}",
            "data.columns.user=u",
            "data.columns.item=i",
        )
    )
    # the default id_type=str: an integer column gives each integer's exact decimal text
    assert df["user"].tolist() == ["1", "2", "2"] and df["item"].tolist() == ["3", "3", "4"]
    df = tabular.load_csv(
        data_cfg(
            "csv",
            f"data.path={tmp_path / 'log.parquet'}",
            "data.columns.user=u",
            "data.columns.item=i",
            "data.id_type=int",
        )
    )
    assert df["user"].tolist() == [1, 2, 2] and df["item"].tolist() == [3, 3, 4]


def test_csv_without_header_by_position_relative_to_root(tmp_path):
    write(tmp_path / "logs" / "x.csv", "7|1|100\n8|2|200\n7|2|300\n")
    df = tabular.load_csv(
        data_cfg(
            "csv",
            f"data.root={tmp_path}",
            "data.path=logs/x.csv",
            "data.header=false",
            "data.sep='|'",
            "data.columns.user=0",
            "data.columns.item=1",
            "data.columns.time=2",
        )
    )
    assert df[["user", "item", "time"]].to_numpy().tolist() == [
        ["7", "1", 100],
        ["8", "2", 200],
        ["7", "2", 300],
    ]


def test_data_root_defaults_to_env_then_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "env"))
    assert files.data_root({}) == tmp_path / "env"
    assert data_cfg("ml-100k")["root"] == str(tmp_path / "env")
    monkeypatch.delenv("RECSYS_DATA_DIR")
    assert str(files.data_root({})) == "data"
    assert data_cfg("ml-100k")["root"] == "data"


# -- loaders named by module, and by the package-level names of older configs ----------------------
SOURCES = {
    p.stem: str(OmegaConf.load(p).get("source", ""))
    for p in sorted((Path(CONFIG_DIR) / "data").glob("*.yaml"))
}


@pytest.mark.parametrize(
    "name", [n for n, s in SOURCES.items() if s.startswith("recsys.data.sources.")]
)
def test_configs_name_a_format_module_and_the_old_name_is_the_same_loader(name):
    source = SOURCES[name]
    module, _, loader = source.rpartition(".")
    assert module != "recsys.data.sources", f"{name}: name the loader's module"
    old = f"recsys.data.sources.{loader}"  # what checkpoints made before the split store
    assert resolve_source(old) is resolve_source(source)
    assert sources.hashed_name(source) == sources.hashed_name(old) == old


def test_data_fingerprint_and_cache_key_unchanged_by_the_move(tmp_path):
    """Runs and cached splits made when the loaders lived in one module stay comparable and
    reusable: the value below is ml-100k's fingerprint computed before the move, over the keys
    that existed then (keys added since, such as the feature files, change what is prepared)."""
    cfg = data_cfg("ml-100k")
    assert cfg["source"] == "recsys.data.sources.movielens.load_ml100k"
    later = ("cold_item_ratio", "item_features", "user_features", "feature_min_count")
    later += ("fold_in_events",)
    assert fingerprint(cfg) != fingerprint({k: v for k, v in cfg.items() if k not in later})
    cfg = {k: v for k, v in cfg.items() if k not in later}
    assert fingerprint(cfg) == "054843265c3bebe5"
    assert fingerprint({**cfg, "source": "recsys.data.sources.load_ml100k"}) == "054843265c3bebe5"
    # data configs stored before the sequence window moved to model.max_len carry max_seq_len
    assert fingerprint({**cfg, "max_seq_len": 200}) == "054843265c3bebe5"
    cfg = ml100k_with(tmp_path, "1\t10\t5\t300\n2\t10\t3\t100\n1\t20\t4\t200\n")
    new = cache_path(cfg, 0)
    assert new is not None
    assert cache_path({**cfg, "source": "recsys.data.sources.load_ml100k"}, 0) == new
    # another loader is another dataset
    assert fingerprint({**cfg, "source": "recsys.data.sources.load_ml1m"}) != fingerprint(cfg)


# -- bad input: one line naming file, line and column ----------------------------------------------
def ml100k_with(tmp_path, text: str) -> dict:
    write(tmp_path / "ml-100k" / "u.data", text)
    return data_cfg("ml-100k", f"data.root={tmp_path}", "data.download=false")


def one_line_error(fn, *args) -> str:
    with pytest.raises(DataError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_file_names_files_directory_and_url(tmp_path):
    msg = one_line_error(
        movielens.load_ml100k, data_cfg("ml-100k", f"data.root={tmp_path}", "data.download=false")
    )
    assert "missing u.data" in msg and str(tmp_path / "ml-100k") in msg
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in msg


def test_missing_column(tmp_path):
    write(tmp_path / "ml-20m" / "ratings.csv", "userId,itemId,rating,timestamp\n1,2,3,4\n")
    msg = one_line_error(movielens.load_movielens_csv, data_cfg("ml-20m", f"data.root={tmp_path}"))
    assert "ratings.csv: missing column 'movieId' (item)" in msg and "userId, itemId" in msg
    write(tmp_path / "d" / "d.inter", "user_id:token\tproduct:token\n1\t2\n")
    msg = one_line_error(
        atomic.load_atomic, data_cfg("atomic", f"data.root={tmp_path}", "data.name=d")
    )
    assert "d.inter: missing field 'item_id' (item" in msg


def test_unparseable_line_reports_file_and_line(tmp_path):
    msg = one_line_error(
        movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n1\t3\t4\t5\t6\n")
    )
    assert msg.endswith("u.data: line 2: expected 4 fields, found 5")
    msg = one_line_error(
        movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n5\t6\t7\t8\n1\t3\n")
    )
    assert msg.endswith("u.data: line 3: expected 4 fields, found 2")
    msg = one_line_error(
        movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n5\t6\t7\t8\n1\t3\t\t9\n")
    )
    assert msg.endswith("u.data: line 3: missing value in column 'rating' (rating)")
    write(tmp_path / "ml-1m" / "ratings.dat", "1::2::3::4\n1::2::3::\n")
    msg = one_line_error(movielens.load_ml1m, data_cfg("ml-1m", f"data.root={tmp_path}"))
    assert "ratings.dat: line 2: missing value in column 'Timestamp'" in msg


def test_non_numeric_rating_and_timestamp(tmp_path):
    msg = one_line_error(
        movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n1\t3\tfive\t5\n")
    )
    assert "u.data: line 2: column 'rating' (rating) must be a number, got 'five'" in msg
    write(
        tmp_path / "ml-latest-small" / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,2,3,4\n1,3,4,5\n2,2,1,yesterday\n",
    )
    msg = one_line_error(
        movielens.load_movielens_csv, data_cfg("ml-latest-small", f"data.root={tmp_path}")
    )
    assert "ratings.csv: line 4: column 'timestamp' (time) must be a number, got 'yesterday'" in msg


def test_negative_or_non_integer_ids(tmp_path):
    msg = one_line_error(movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n-1\t3\t4\t5\n"))
    assert "u.data: line 2: column 'user_id' (user) must be a non-negative integer id" in msg
    assert msg.endswith(", got '-1'")
    msg = one_line_error(movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n2\t3.5\t4\t5\n"))
    assert "line 2: column 'item_id' (item) must be a non-negative integer id" in msg
    assert msg.endswith(", got '3.5'")
    write(tmp_path / "beauty" / "Beauty.txt", "1 2 3\n2 3 4\n\n3 4 x7\n")
    msg = one_line_error(
        sequences.load_user_sequences, data_cfg("amazon-beauty", f"data.root={tmp_path}")
    )
    assert "Beauty.txt: line 4: item id at field 3 must be a non-negative integer" in msg
    assert msg.endswith(", got 'x7'")
    write(tmp_path / "beauty" / "Beauty.txt", "1 2 3\n-2 3 4\n")
    msg = one_line_error(
        sequences.load_user_sequences, data_cfg("amazon-beauty", f"data.root={tmp_path}")
    )
    assert "line 2: user id at field 1 must be a non-negative integer" in msg
    assert msg.endswith(", got '-2'")


def test_single_valued_user_or_item_column(tmp_path):
    msg = one_line_error(movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n1\t3\t4\t5\n"))
    assert "u.data: the user column holds a single value (1)" in msg
    msg = one_line_error(movielens.load_ml100k, ml100k_with(tmp_path, "1\t2\t3\t4\n2\t2\t4\t5\n"))
    assert "u.data: the item column holds a single value (2)" in msg


def test_empty_after_filtering_names_the_step(tmp_path):
    cfg = ml100k_with(tmp_path, "1\t2\t3\t4\n2\t3\t4\t5\n")
    cfg["rating_threshold"] = 5
    msg = one_line_error(build, cfg, 0)
    assert msg == "ml-100k: no interactions left after rating threshold (data.rating_threshold)"
    cfg = ml100k_with(tmp_path, "1\t2\t3\t4\n2\t3\t4\t5\n1\t3\t4\t6\n")
    cfg["min_user_interactions"] = 3
    msg = one_line_error(build, cfg, 0)
    assert "no interactions left after k-core filtering" in msg


def test_empty_file(tmp_path):
    msg = one_line_error(movielens.load_ml100k, ml100k_with(tmp_path, ""))
    assert "u.data" in msg


# -- the shared copies: published statistics -------------------------------------------------------
SHARED = shared_datasets()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared datasets absent")


@pytest.mark.data
@needs_shared
@pytest.mark.parametrize(
    "name, users, items, interactions",
    [
        ("ml-100k", 943, 1682, 100000),
        ("ml-1m", 6040, 3706, 1000209),
        ("amazon-beauty", 22363, 12101, 198502),
        ("ml-latest-small", 610, 9724, 100836),
        ("lastfm", 1892, 17632, 92834),
    ],
)
def test_shared_statistics(name, users, items, interactions, tmp_path):
    cfg = data_cfg(name, f"data.root={SHARED}", f"data.cache_dir={tmp_path}")
    if not any(
        (files._folder(cfg) / f).is_file() for f in cfg["files"] + cfg.get("alternative_files", [])
    ):
        pytest.skip(f"{name} absent from {SHARED}")
    split = prepare(cfg, seed=0)
    n = len(split.train) + len(split.val) + len(split.test)
    assert (split.n_users, split.n_items, n) == (users, items, interactions)
    assert split.audit is not None and split.audit["ok"]
    assert np.isin(split.test.user, split.train.user).all()
