"""Attribute tables through the data pipeline (recsys.data.pipeline): encoded after the split from
training entities only, cached, keyed by the feature files' bytes, opted-out users' rows dropped,
bad files refused with one line; and the real offline datasets (marked ``data``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recsys.data import sources
from recsys.data.pipeline import build, cache_path, fingerprint, prepare, resolve_data_config
from recsys.errors import DataError
from tests.conftest import compose_config, shared_datasets

GENRES = ("Action", "Adventure", "Animation")
OCCUPATIONS = ("writer", "other", "astronaut")  # user 3 alone is an astronaut


def genre_of(i: int) -> str:
    return "Western" if i == 16 else GENRES[i % 3]


def year_of(i: int) -> int:
    return 2020 if i == 16 else 1990 + i % 5


def occupation_of(u: int) -> str:
    return "astronaut" if u == 3 else OCCUPATIONS[u % 2]


def write_ml100k(root) -> None:
    """20 users x 15 items, plus item 16 whose one event is user 1's last (a test-only item),
    u.item for items 1..16 and 99 (99 is in no event), u.user for users 1..20."""
    folder = root / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, i, 1000 * u + 10 * i) for u in range(1, 21) for i in range(1, 16) if (u + i) % 3]
    rows.append((1, 16, 1000 + 10 * 16))
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    names = ["unknown", "Action", "Adventure", "Animation", *["x"] * 14, "Western"]
    item_lines = []
    for i in [*range(1, 17), 99]:
        flags = ["1" if g == genre_of(i) else "0" for g in names]
        item_lines.append(
            f"{i}|Movie {i} ({year_of(i)})|01-Jan-{year_of(i)}||http://x|" + "|".join(flags)
        )
    (folder / "u.item").write_text("\n".join(item_lines) + "\n")
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|{occupation_of(u)}|0000{u}" for u in range(1, 21)]
    (folder / "u.user").write_text("\n".join(users) + "\n")


def ml100k_cfg(root, **kw) -> dict:
    cfg = {
        "name": "ml-100k",
        "source": "recsys.data.sources.movielens.load_ml100k",
        "root": str(root),
        "folder": "ml-100k",
        "files": ["u.data"],
        "download": False,
        "split": "leave_one_out",
        "item_features": "auto",
        "user_features": "auto",
        "feature_min_count": 1,
    }
    return {**cfg, **kw}


def decode(table, name: str) -> list[set[str]]:
    """Each entity's values of a categorical field, from its codes."""
    vocab = table.field(name).vocab
    return [{vocab[c - 1] for c in row if c} for row in table.codes[name]]


def test_vocabularies_are_the_training_entities_values(tmp_path):
    write_ml100k(tmp_path)
    split = build(ml100k_cfg(tmp_path), seed=0)
    items, users = split.train.item_ids, split.train.user_ids
    train_items = set(items[np.unique(split.train.item)].tolist())
    assert 16 in items and 16 not in train_items  # item 16: test only
    table = split.item_features
    # brute force over the raw rows: the values of the items that have a training event
    assert table.field("genre").vocab == tuple(sorted({genre_of(i) for i in train_items}))
    assert "Western" not in table.field("genre").vocab
    assert table.field("year").vocab == tuple(sorted({str(year_of(i)) for i in train_items}))
    genres, years = decode(table, "genre"), decode(table, "year")
    for k, i in enumerate(items.tolist()):
        expected = set() if i == 16 else {genre_of(i)}
        assert genres[k] == expected and years[k] == ({str(year_of(i))} if i != 16 else set())
    train_years = np.array([year_of(i) for i in sorted(train_items)], dtype=np.float64)
    f = table.field("year_num")
    assert f.mean == pytest.approx(train_years.mean()) and f.std == pytest.approx(train_years.std())
    k16 = int(np.flatnonzero(items == 16)[0])
    assert table.values["year_num"][k16] == pytest.approx((2020 - train_years.mean()) / f.std)
    assert table.present.all() and len(table) == split.n_items
    utable = split.user_features
    train_users = set(users[np.unique(split.train.user)].tolist())
    assert utable.field("occupation").vocab == tuple(
        sorted({occupation_of(u) for u in train_users})
    )
    assert utable.codes["occupation"].shape == (split.n_users, 1)
    audit = split.audit["features"]
    assert split.audit["ok"] and audit["item"]["ok"] and audit["user"]["ok"]
    assert audit["item"]["rows"] == 17 and audit["item"]["rows_matching_no_entity"] == 1  # 99
    assert audit["item"]["fields"]["genre"]["values_only_outside_train"] == 1  # Western
    assert audit["item"]["fields"]["genre"]["vocabulary_from_train"]


def test_cache_round_trip_and_key(tmp_path):
    write_ml100k(tmp_path)
    cfg = ml100k_cfg(tmp_path)
    built = build(cfg, seed=0)
    first = prepare(cfg, seed=0)  # writes the cache
    again = prepare(cfg, seed=0)  # reads it
    path, key = cache_path(cfg, 0)
    assert path.is_file()
    for got in (first, again):
        for entity in ("item", "user"):
            a, b = getattr(built, f"{entity}_features"), getattr(got, f"{entity}_features")
            assert a.fields == b.fields
            for name in a.codes:
                np.testing.assert_array_equal(a.codes[name], b.codes[name])
            for name in a.values:
                np.testing.assert_array_equal(a.values[name], b.values[name])
            np.testing.assert_array_equal(a.present, b.present)
    assert again.audit["features"] == built.audit["features"]
    # a byte of a feature file changes the key; the log alone is unchanged
    u_item = tmp_path / "ml-100k" / "u.item"
    text = u_item.read_text()
    assert "Movie 99 (1994)" in text
    u_item.write_text(text.replace("Movie 99 (1994)", "Movie 99 (1993)"))
    assert cache_path(cfg, 0)[1] != key
    key2 = cache_path(cfg, 0)[1]
    u_user = tmp_path / "ml-100k" / "u.user"
    u_user.write_text(u_user.read_text().replace("|00001", "|00009"))
    assert cache_path(cfg, 0)[1] != key2
    # without features, no feature file is read or keyed
    none = ml100k_cfg(tmp_path, item_features=None, user_features=None)
    assert build(none, 0).item_features is None and build(none, 0).user_features is None
    assert fingerprint(none) != fingerprint(cfg)
    assert fingerprint(ml100k_cfg(tmp_path, feature_min_count=2)) != fingerprint(cfg)


def cache_text(path) -> str:
    """Every text a cache file holds (the schemas with their vocabularies, the audit)."""
    with np.load(path, allow_pickle=False) as z:
        return " ".join(str(z[k][()]) for k in z.files if z[k].dtype.kind == "U")


def test_optout_drops_the_users_attribute_row(tmp_path, capsys):
    write_ml100k(tmp_path)
    everyone = ml100k_cfg(tmp_path, cache_dir=str(tmp_path / "c0"))
    kept = prepare(everyone, seed=0)
    assert "astronaut" in kept.user_features.field("occupation").vocab  # user 3 trains
    assert "astronaut" in cache_text(cache_path(everyone, 0)[0])  # so the check below can fail
    optout = tmp_path / "optout.txt"
    optout.write_text("3\n")
    cfg = ml100k_cfg(tmp_path, exclude_users=str(optout), cache_dir=str(tmp_path / "c"))
    capsys.readouterr()
    split = prepare(cfg, seed=0)
    err = capsys.readouterr().err
    assert "user rows name no user" not in err  # dropped before encoding, not unmatched
    assert 3 not in split.train.user_ids.tolist()
    assert "astronaut" not in split.user_features.field("occupation").vocab
    audit = split.audit["features"]["user"]
    assert audit["rows"] == 19 and audit["rows_matching_no_entity"] == 0
    path, _ = cache_path(cfg, 0)
    assert "astronaut" not in cache_text(path)


def test_holdout_users_vocabulary_from_training_users(tmp_path):
    write_ml100k(tmp_path)
    split = build(ml100k_cfg(tmp_path, split="holdout_users", n_heldout_users=3), seed=1)
    users = split.train.user_ids
    train_users = set(users[np.unique(split.train.user)].tolist())
    assert len(train_users) == 14
    vocab = split.user_features.field("occupation").vocab
    assert vocab == tuple(sorted({occupation_of(u) for u in train_users}))
    occupations = decode(split.user_features, "occupation")
    for k, u in enumerate(users.tolist()):
        assert occupations[k] == ({occupation_of(u)} & set(vocab))


def test_csv_log_with_a_mapped_item_table(tmp_path):
    log = tmp_path / "log.csv"
    rows = [
        (u, i, 10 * j + k)
        for j, u in enumerate(("u1", "u2", "u3"))
        for k, i in enumerate(("007", "7", "a"))
    ]
    rows.append(("u1", "new", 99))  # u1's last event: the test-only item "new"
    log.write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (tmp_path / "items.csv").write_text(
        "sku,brand,tags,price\n007,acme,x|y,10\n7,acme,y,20\na,zeta,,30\nnew,newco,x|z,1000\n"
    )
    cfg = {
        "name": "csv",
        "source": "recsys.data.sources.tabular.load_csv",
        "root": str(tmp_path),
        "path": "log.csv",
        "columns": {"user": "user", "item": "item", "time": "ts"},
        "id_type": "str",
        "split": "leave_one_out",
        "cache_dir": str(tmp_path / "cache"),
        "item_features": "items.csv",
        "item_feature_columns": {
            "id": "sku",
            "categorical": ["brand"],
            "multi": {"tags": "|"},
            "numeric": ["price"],
        },
    }
    split = prepare(cfg, seed=0)
    items = split.train.item_ids.tolist()
    table = split.item_features
    train_items = {items[i] for i in np.unique(split.train.item)}
    assert "new" not in train_items and {"007", "7"} <= set(items)  # "007" and "7" stay two ids
    assert table.field("brand").vocab == tuple(
        sorted({{"007": "acme", "7": "acme", "a": "zeta"}[i] for i in train_items})
    )
    brands, tags = decode(table, "brand"), decode(table, "tags")
    assert brands[items.index("new")] == set()  # newco: only a test item has it
    assert tags[items.index("new")] == ({"x"} if "007" in train_items else set())
    prices = np.array([{"007": 10, "7": 20, "a": 30}[i] for i in sorted(train_items)], float)
    assert table.field("price").mean == pytest.approx(prices.mean())
    key = cache_path(cfg, 0)[1]
    (tmp_path / "items.csv").write_text((tmp_path / "items.csv").read_text().replace("30", "31"))
    assert cache_path(cfg, 0)[1] != key


def test_movielens_tags_stop_at_the_latest_training_event(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    rows = [(u, i, 1000 * u + i) for u in range(1, 6) for i in range(1, 7)]
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},4.0,{t}\n" for u, i, t in rows)
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},M{i} (2000),Drama\n" for i in range(1, 7))
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,2,Early,0\n2,3,Late,999999\n")
    cfg = {
        "name": "ml-latest-small",
        "source": "recsys.data.sources.movielens.load_movielens_csv",
        "root": str(tmp_path),
        "folder": "ml-latest-small",
        "files": ["ratings.csv"],
        "download": False,
        "split": "leave_one_out",
        "item_features": "auto",
        "cache": False,
    }
    split = build(cfg, seed=0)
    assert split.train.time.max() < 999999
    assert split.item_features.field("tag").vocab == ("early",)


def test_atomic_item_and_user_files(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    events = [(u, i, 10 * k) for u in range(1, 7) for k, i in enumerate((1, 2, 3, 4))]
    (folder / "toy.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"u{u}\ti{i}\t{t}\n" for u, i, t in events)
    )
    (folder / "toy.item").write_text(
        "item_id:token\tgenre:token_seq\tprice:float\ni1\ta b\t1\ni2\tb\t3\ni3\tc\t\ni4\td\t100\n"
    )
    (folder / "toy.user").write_text("user_id:token\tcountry:token\nu1\tfr\nu2\tde\n")
    cfg = {
        "name": "toy",
        "source": "recsys.data.sources.atomic.load_atomic",
        "root": str(tmp_path),
        "folder": "toy",
        "files": ["toy.inter"],
        "sep": "\t",
        "fields": {"user": "user_id", "item": "item_id", "time": "timestamp"},
        "download": False,
        "split": "leave_one_out",
        "cache": False,
        "item_features": "auto",
        "user_features": "auto",
    }
    split = build(cfg, seed=0)
    items = split.train.item_ids.tolist()
    assert items == ["i1", "i2", "i3", "i4"]
    # i3 and i4: every user's second-last and last events, validation and test only
    assert set(split.train.item.tolist()) == {0, 1}
    table = split.item_features
    assert table.field("genre").vocab == ("a", "b")  # c, d: held only outside training
    assert decode(table, "genre") == [{"a", "b"}, {"b"}, set(), set()]
    assert table.field("price").mean == pytest.approx(2.0)  # i1 and i2, the training items
    assert decode(split.user_features, "country")[:3] == [{"fr"}, {"de"}, set()]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", '{"1": [1], "2": 3}', "bad.json: item '2': expected a list of attributes, got int"),
        ("bad.json", '{"1": [1],\n "2": [2}', "bad.json: line 2 column 9: not valid JSON (Expecting ',' delimiter)"),
        ("missing.csv", None, "missing.csv: no such file (data.item_features)"),
    ],
)  # fmt: skip
def test_bad_feature_file_is_one_error(tmp_path, name, content, message):
    write_ml100k(tmp_path)
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        prepare(ml100k_cfg(tmp_path, item_features=name), seed=0)
    assert str(e.value) == f"{tmp_path}/{message}"
    assert not list((tmp_path / "cache").glob("*.npz"))


@pytest.mark.slow
def test_cli_bad_feature_file_exit_2(tmp_path):
    write_ml100k(tmp_path)
    (tmp_path / "attrs.json").write_text('{"1": [1],\n "2": [2}')
    r = subprocess.run(
        [sys.executable, "-m", "recsys.cli.data", "stats", "data=ml-100k"]
        + [f"data.root={tmp_path}", "data.download=false", "data.item_features=attrs.json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path}/attrs.json: line 2 column 9: not valid JSON (Expecting ',' delimiter)"
    ]


def test_composed_configs_carry_the_feature_keys():
    for overrides in (
        ["data=amazon-beauty"],
        ["data=ml-100k"],
        ["data=ml-latest-small"],
        ["data=atomic", "data.name=x"],
        ["data=csv", "data.path=x.csv"],
    ):
        d = resolve_data_config(compose_config("train", overrides).data)
        assert {"item_features", "user_features", "feature_min_count"} <= set(d)
    csv = compose_config(
        "train",
        ["data=csv", "data.path=x.csv", "data.item_features=items.csv"]
        + ['data.item_feature_columns.multi={genres:"|"}'],
    )
    d = resolve_data_config(csv.data)
    assert d["item_feature_columns"]["multi"] == {"genres": "|"}


# -- the real offline datasets ------------------------------------------------------------------
SHARED = shared_datasets()


def real(name: str):
    cfg = compose_config("train", [f"data={name}", f"data.root={SHARED}", "data.cache=false"])
    sources.NOTICES.clear()
    return build(resolve_data_config(cfg.data), seed=0)


@pytest.mark.data
@pytest.mark.skipif(SHARED is None, reason="shared datasets absent")
@pytest.mark.parametrize(
    "name, item_fields, user_fields",
    [
        ("amazon-beauty", {"attribute": 637}, None),
        ("ml-100k", {"genre": 18, "year": 71, "year_num": None}, {"age": 7, "gender": 2, "occupation": 21}),
        ("ml-1m", {"genre": 18, "year": 81, "year_num": None}, {"age": 7, "gender": 2, "occupation": 21}),
        ("ml-latest-small", {"genre": 19, "tag": None, "year": None, "year_num": None}, None),
    ],
)  # fmt: skip
def test_real_datasets(name, item_fields, user_fields):
    if not (SHARED / real_folder(name)).is_dir():
        pytest.skip(f"{name} absent")
    split = real(name)
    audit = split.audit["features"]
    print(name, json.dumps(audit))
    assert split.audit["ok"] and all(a["ok"] for a in audit.values())
    for entity, expected in (("item", item_fields), ("user", user_fields)):
        table = getattr(split, f"{entity}_features")
        if expected is None:
            assert table is None
            continue
        assert table.names == list(expected)
        for field, size in expected.items():
            if size is not None:
                assert len(table.field(field).vocab) == size, field
    if name == "amazon-beauty":
        assert split.n_items == 12101 and audit["item"]["entities_with_row"] == 12101


def real_folder(name: str) -> str:
    return {"amazon-beauty": "beauty"}.get(name, name)
