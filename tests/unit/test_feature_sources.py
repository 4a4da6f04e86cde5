"""Readers of attribute files (recsys.data.sources.features): each on a small hand-written file,
the values it must give, and one malformed file per reader with its exact one-line message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.sources import features as F
from recsys.errors import ConfigError, DataError


def values(raw, field: str) -> dict:
    """External id → sorted values of ``field`` (the reference view of the long format)."""
    cat = raw.categorical[raw.categorical["field"] == field]
    out: dict = {}
    for r, v in zip(cat["row"], cat["value"], strict=True):
        key = raw.ids[r].item() if isinstance(raw.ids[r], np.generic) else raw.ids[r]
        out.setdefault(key, []).append(v)
    return {k: sorted(v) for k, v in out.items()}


def raises(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


# -- S3-Rec item2attributes.json -------------------------------------------------------------------
def test_item2attributes(tmp_path):
    p = tmp_path / "Toy_item2attributes.json"
    p.write_text('{"4": [1, 2, 3], "83": [4, 2], "7": []}')
    raw = F.read_item2attributes(p)
    assert raw.entity == "item" and raw.ids.dtype == np.int64
    assert raw.ids.tolist() == [4, 83, 7]
    assert values(raw, "attribute") == {4: ["1", "2", "3"], 83: ["2", "4"]}
    assert raw.fields == ["attribute"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{\n  "4": [1, 2],\n  "83": [3,]\n}', "line 3 column 12: not valid JSON (Expecting value)"),
        ('{"4": [1], "5": 7}', "item '5': expected a list of attributes, got int"),
        ('{"4": [1], "5": [1.5]}', "item '5': attribute 1.5 is not an integer or a string"),
        ('{"4": [1], "x9": [2]}', "key 'x9' is not an id (item ids are non-negative integers "
         "written exactly)"),
        ('{"4": [1], "4": [2]}', "key '4' is given twice"),
        ("[[1, 2]]", "expected a JSON object {item id: [attribute, ...]}, got list"),
    ],
)  # fmt: skip
def test_item2attributes_malformed(tmp_path, text, expected):
    p = tmp_path / "Bad_item2attributes.json"
    p.write_text(text)
    assert raises(F.read_item2attributes, p) == f"{p}: {expected}"


# -- MovieLens ---------------------------------------------------------------------------------------
def ml100k_item_line(i, title, date, flags):
    return f"{i}|{title}|{date}||http://x|" + "|".join(
        "1" if g in flags else "0" for g in range(19)
    )


def test_ml100k_items(tmp_path):
    p = tmp_path / "u.item"
    p.write_bytes(
        "\n".join(
            [
                ml100k_item_line(1, "Toy Story (1995)", "01-Jan-1995", {3, 4, 5}),
                ml100k_item_line(2, "Caf\xe9 (1994)", "", {0}),  # Latin-1, unknown genre only
                ml100k_item_line(3, "unknown", "", set()),
            ]
        ).encode("latin-1")
        + b"\n"
    )
    raw = F.read_ml100k_items(p)
    assert raw.ids.tolist() == [1, 2, 3]
    assert values(raw, "genre") == {1: ["Animation", "Children's", "Comedy"]}
    assert values(raw, "year") == {1: ["1995"], 2: ["1994"]}  # 2: the title's year
    np.testing.assert_array_equal(raw.numeric["year_num"], [1995.0, 1994.0, np.nan])


def test_ml100k_items_malformed(tmp_path):
    p = tmp_path / "u.item"
    good = ml100k_item_line(1, "A (1995)", "01-Jan-1995", {1})
    bad = ml100k_item_line(2, "B (1995)", "01-Jan-1995", set()).split("|")
    bad[5 + 1] = "2"  # the Action flag
    p.write_text(good + "\n" + "|".join(bad) + "\n")
    assert (
        raises(F.read_ml100k_items, p)
        == f"{p}: line 2: genre flag 'Action' must be 0 or 1, got '2'"
    )
    p.write_text(good + "\n3|C (1990)|01-Jan-1990\n")
    assert raises(F.read_ml100k_items, p) == f"{p}: line 2: expected 24 fields, found 3"


def test_movies_dat_and_csv(tmp_path):
    dat = tmp_path / "movies.dat"
    dat.write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Caf\xe9 (1994)::(no genres listed)\n".encode("latin-1")
    )
    raw = F.read_movielens_movies(dat)
    assert values(raw, "genre") == {1: ["Animation", "Children's", "Comedy"]}
    assert values(raw, "year") == {1: ["1995"], 2: ["1994"]}
    csv = tmp_path / "movies.csv"
    csv.write_text(
        "movieId,title,genres\n"
        '10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Untitled,(no genres listed)\n"
        '30,"Serial (2006-2007)",Drama\n'
    )
    raw = F.read_movielens_movies(csv)
    assert raw.ids.tolist() == [10, 20, 30]
    assert values(raw, "genre") == {10: ["Comedy", "Drama", "Romance"], 30: ["Drama"]}
    assert values(raw, "year") == {10: ["1995"], 30: ["2006"]}
    np.testing.assert_array_equal(raw.numeric["year_num"], [1995.0, np.nan, 2006.0])


def test_movies_malformed(tmp_path):
    csv = tmp_path / "movies.csv"
    csv.write_text("movieId,title,genres\n1,A (1995),Drama\n2.5,B (1996),Comedy\n")
    assert raises(F.read_movielens_movies, csv) == (
        f"{csv}: line 3: movie id must be a non-negative integer id (plain digits without sign, "
        "spaces or leading zeros), got '2.5'"
    )
    dat = tmp_path / "movies.dat"
    dat.write_text("1::A (1995)::Drama\n2::B (1996)\n")
    assert raises(F.read_movielens_movies, dat) == f"{dat}: line 2: expected 3 fields, found 2"
    dat.write_text("1::A (1995)::Drama\n1::A again (1995)::Drama\n")
    assert raises(F.read_movielens_movies, dat) == f"{dat}: item 1 has two rows"


def test_tags_cutoff_optout_and_case(tmp_path):
    p = tmp_path / "tags.csv"
    p.write_text(
        "userId,movieId,tag,timestamp\n"
        "1,10,Funny ,100\n"
        "2,10,funny,150\n"
        "2,20,Dark,200\n"
        "3,20,twist,300\n"  # after the cutoff: written in the test period
        "4,30,mine,100\n"  # an opted-out author
        "1,40,  ,100\n"  # an empty tag
    )
    raw = F.read_movielens_tags(p, before=250.0, exclude_users=["4"])
    assert values(raw, "tag") == {10: ["funny", "funny"], 20: ["dark"]}
    assert set(raw.ids.tolist()) == {10, 20}
    everything = F.read_movielens_tags(p)
    assert values(everything, "tag")[20] == ["dark", "twist"]
    assert values(everything, "tag")[30] == ["mine"]


def test_tags_malformed(tmp_path):
    p = tmp_path / "tags.csv"
    p.write_text("userId,movieId,tag,timestamp\n1,10,a,100\n1,11,b,soon\n")
    assert raises(F.read_movielens_tags, p) == (
        f"{p}: line 3: column 'timestamp' (time) must be a number, got 'soon'"
    )


def test_users_ml100k_and_ml1m(tmp_path):
    u = tmp_path / "u.user"
    u.write_text("1|24|M|technician|85711\n2|17|F|student|94043\n3|60|M|retired|00000\n")
    raw = F.read_movielens_users(u)
    assert values(raw, "age") == {1: ["18-24"], 2: ["<18"], 3: ["56+"]}
    assert values(raw, "gender") == {1: ["M"], 2: ["F"], 3: ["M"]}
    assert values(raw, "occupation")[1] == ["technician"]
    d = tmp_path / "users.dat"
    d.write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    raw = F.read_movielens_users(d)
    assert values(raw, "age") == {1: ["<18"], 2: ["56+"]}
    assert values(raw, "occupation") == {1: ["K-12 student"], 2: ["self-employed"]}
    assert not any("4806" in str(v) for v in raw.categorical["value"])  # zip never kept


def test_users_malformed(tmp_path):
    u = tmp_path / "u.user"
    u.write_text("1|24|M|technician|85711\n2|old|F|other|94043\n")
    assert (
        raises(F.read_movielens_users, u) == f"{u}: line 2: age must be a whole number, got 'old'"
    )
    d = tmp_path / "users.dat"
    d.write_text("1::F::1::10::48067\n2::M::56::99::70072\n")
    assert raises(F.read_movielens_users, d) == (
        f"{d}: line 2: occupation must be a code 0..20, got '99'"
    )


# -- RecBole atomic ----------------------------------------------------------------------------------
def test_atomic_item(tmp_path):
    p = tmp_path / "toy.item"
    p.write_text(
        "item_id:token\tgenre:token_seq\tbrand:token\tprice:float\n"
        "007\tAction Comedy\tacme\t9.5\n"
        "8\t\t\t\n"
    )
    raw = F.read_atomic_features(p, "item", "item_id")
    assert raw.ids.tolist() == ["007", "8"]  # tokens as written
    assert values(raw, "genre") == {"007": ["Action", "Comedy"]}
    assert values(raw, "brand") == {"007": ["acme"]}
    np.testing.assert_array_equal(raw.numeric["price"], [9.5, np.nan])


def test_atomic_malformed(tmp_path):
    p = tmp_path / "toy.item"
    p.write_text("item_id:token\temb:float_seq\n1\t0.1 0.2\n")
    assert raises(F.read_atomic_features, p, "item", "item_id") == (
        f"{p}: line 1: field 'emb:float_seq' has type float_seq, which is not read as a feature "
        "(remove the column)"
    )
    p.write_text("item_id:token\tprice:float\n1\t2.5\n2\tcheap\n")
    assert raises(F.read_atomic_features, p, "item", "item_id") == (
        f"{p}: line 3: column 'price:float' must be a finite number, got 'cheap'"
    )
    p.write_text("id:token\tprice:float\n1\t2.5\n")
    assert raises(F.read_atomic_features, p, "item", "item_id") == (
        f"{p}: missing field 'item_id' (item ids, data.fields.item); the header has: id:token, "
        "price:float"
    )


# -- a user's own table ------------------------------------------------------------------------------
COLUMNS = {"id": "sku", "categorical": ["brand"], "multi": {"tags": "|"}, "numeric": ["price"]}


def test_table_csv_tsv_parquet(tmp_path):
    rows = [("a1", "acme", "x|y", "9.5"), ("007", "", "y", ""), ("b2", "zeta", "", "1")]
    csv = tmp_path / "items.csv"
    csv.write_text("sku,brand,tags,price\n" + "".join(",".join(r) + "\n" for r in rows))
    tsv = tmp_path / "items.tsv"
    tsv.write_text("sku\tbrand\ttags\tprice\n" + "".join("\t".join(r) + "\n" for r in rows))
    pq = tmp_path / "items.parquet"
    pd.DataFrame(
        {
            "sku": [r[0] for r in rows],
            "brand": ["acme", None, "zeta"],
            "tags": ["x|y", "y", None],
            "price": [9.5, None, 1.0],
        }
    ).to_parquet(pq)
    for p in (csv, tsv, pq):
        raw = F.read_feature_table(p, "item", COLUMNS, id_type="str")
        assert raw.ids.tolist() == ["a1", "007", "b2"], p
        assert values(raw, "brand") == {"a1": ["acme"], "b2": ["zeta"]}, p
        assert values(raw, "tags") == {"a1": ["x", "y"], "007": ["y"]}, p
        np.testing.assert_array_equal(raw.numeric["price"], [9.5, np.nan, 1.0])


def test_table_malformed(tmp_path):
    p = tmp_path / "items.csv"
    p.write_text("sku,brand,price\n1,acme,9.5\n2,zeta,lots\n")
    assert raises(F.read_feature_table, p, "item", {"id": "sku", "numeric": ["price"]}) == (
        f"{p}: line 3: column 'price' must be a finite number, got 'lots'"
    )
    assert raises(F.read_feature_table, p, "item", {"id": "sku", "categorical": ["color"]}) == (
        f"{p}: missing column 'color'; the file has: sku, brand, price"
    )
    assert raises(F.read_feature_table, p, "item", {"id": "id", "categorical": ["brand"]}) == (
        f"{p}: missing column 'id' (item); the file has: sku, brand, price"
    )
    p.write_text("sku,brand\n1,acme\n-2,zeta\n")
    message = raises(
        F.read_feature_table, p, "item", {"id": "sku", "categorical": ["brand"]}, "int"
    )
    assert message.startswith(f"{p}: line 3: column 'sku' (item) must be a non-negative integer id")
    p.write_text("sku,brand\n1,acme\n1,zeta\n")
    assert raises(F.read_feature_table, p, "item", {"id": "sku", "categorical": ["brand"]}) == (
        f"{p}: item '1' has two rows"
    )
    with pytest.raises(ConfigError, match=r"^data.item_feature_columns.multi must map columns"):
        F.read_feature_table(p, "item", {"id": "sku", "multi": ["brand"]})


# -- discovery -----------------------------------------------------------------------------------------
def test_feature_files_discovery(tmp_path):
    folder = tmp_path / "beauty"
    folder.mkdir()
    (folder / "Beauty.txt").write_text("1 2 3\n")
    cfg = {
        "root": str(tmp_path),
        "folder": "beauty",
        "files": ["Beauty.txt"],
        "source": "recsys.data.sources.sequences.load_user_sequences",
        "item_features": "auto",
        "user_features": "auto",
    }
    assert F.feature_files(cfg, "item") == []  # auto: the published file only when present
    (folder / "Beauty_item2attributes.json").write_text('{"2": [1]}')
    assert F.feature_files(cfg, "item") == [folder / "Beauty_item2attributes.json"]
    assert F.feature_files(cfg, "user") == []
    assert F.feature_files({**cfg, "item_features": None}, "item") == []
    assert F.feature_files({**cfg, "item_features": "beauty/Beauty_item2attributes.json"}, "item")
    missing = {**cfg, "item_features": "elsewhere/items.csv"}
    assert raises(F.feature_files, missing, "item") == (
        f"{tmp_path / 'elsewhere' / 'items.csv'}: no such file (data.item_features)"
    )
    legacy = {k: v for k, v in cfg.items() if not k.endswith("_features")}
    assert F.feature_files(legacy, "item") == []  # configs written before the keys: none


def test_check_config():
    F.check_config({"item_features": "auto", "user_features": None})
    with pytest.raises(ConfigError, match=r"^data.user_features must be auto, null or a file"):
        F.check_config({"user_features": 3})
    with pytest.raises(ConfigError, match=r"^data.feature_min_count must be an integer >= 1"):
        F.check_config({"feature_min_count": 0})
    with pytest.raises(ConfigError, match=r"^data.item_feature_columns: unknown key\(s\) cats"):
        F.check_config({"item_feature_columns": {"id": "x", "cats": []}})
