"""Ids are never silently rewritten: the text as written (``data.id_type=str``, the default) or
integers checked exactly (``int``); never through a float. Encoding, the cache and exports keep
them; damaged text is one DataError line naming file, line and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys.data.interactions import Interactions, encode_ids
from recsys.data.pipeline import build, check_config, prepare, resolve_data_config
from recsys.data.sources import files, is_int_id, movielens, tabular
from recsys.errors import ConfigError, DataError
from tests.conftest import compose_config

BIG = "12345678901234567890"  # beyond int64: as floats, BIG and BIG + 1 are the same number


def csv_cfg(path, *overrides: str) -> dict:
    cfg = compose_config(
        "data_cli",
        [
            "data=csv",
            f"data.path={path}",
            "data.columns.user=uid",
            "data.columns.item=sku",
            *overrides,
        ],
    )
    return OmegaConf.to_container(cfg.data, resolve=True)


def load_error(path, *overrides: str) -> str:
    with pytest.raises(DataError) as e:
        tabular.load_csv(csv_cfg(path, *overrides))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_ids_are_kept_exactly_as_written_by_default(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(f"uid,sku\n007,a\n7,a\n3.5,b\n{BIG},b\n{BIG[:-1]}1,c\n1e3,c\n 12,a\n")
    df = tabular.load_csv(csv_cfg(log))
    assert df["user"].tolist() == ["007", "7", "3.5", BIG, BIG[:-1] + "1", "1e3", " 12"]
    assert all(type(u) is str for u in df["user"])
    inter = Interactions.from_frame(df)
    assert inter.n_users == 7  # 007 and 7, BIG and BIG + 1 stay distinct people
    assert sorted(inter.user_ids.tolist()) == sorted(df["user"].tolist())


@pytest.mark.parametrize(
    "value, line",
    [
        ("3.5", 3),
        ("1e3", 3),
        ("-1", 3),
        (" 12", 3),
        ("007", 3),
        ("+5", 3),
        ("9223372036854775808", 3),  # 2**63
        (BIG, 3),
        ("١٢", 3),  # Arabic-Indic digits: int() would accept them
    ],
)
def test_int_ids_are_checked_exactly(tmp_path, value, line):
    log = tmp_path / "log.csv"
    log.write_text(f"uid,sku\n1,10\n{value},11\n2,12\n", encoding="utf-8")
    msg = load_error(log, "data.id_type=int")
    assert f"log.csv: line {line}: column 'uid' (user) must be a non-negative integer id" in msg
    assert msg.endswith(f"data.id_type=str keeps ids exactly as written, got {value!r}")


def test_int_ids_at_the_limits_load_exactly(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid,sku\n0,1\n9223372036854775807,2\n")
    df = tabular.load_csv(csv_cfg(log, "data.id_type=int"))
    assert df["user"].tolist() == [0, 2**63 - 1] and df["user"].dtype == np.int64
    assert is_int_id("9223372036854775807") and not is_int_id("9223372036854775808")
    assert not any(map(is_int_id, ["", "00", "01", "-0", "+1", "1.0", " 1", "1 ", "٣"]))


def test_official_formats_check_their_integer_ids_exactly(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t300\n2\t010\t3\t100\n")
    cfg = OmegaConf.to_container(
        compose_config("data_cli", ["data=ml-100k", f"data.root={tmp_path}"]).data, resolve=True
    )
    with pytest.raises(DataError) as e:
        movielens.load_ml100k(cfg)
    assert "u.data: line 2: column 'item_id' (item) must be a non-negative integer id" in str(
        e.value
    )
    assert str(e.value).endswith("got '010'")


def test_auto_is_refused_naming_the_key(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("uid,sku\n1,2\n3,4\n")
    with pytest.raises(ConfigError) as e:
        tabular.load_csv(csv_cfg(log, "data.id_type=auto"))
    assert str(e.value).startswith("data.id_type=auto is no longer accepted")
    with pytest.raises(ConfigError, match="data.id_type must be one of str, int, got 'float'"):
        tabular.load_csv(csv_cfg(log, "data.id_type=float"))


# -- text that is not UTF-8, NUL characters, binary files -----------------------------------------
def test_non_utf8_in_an_id_names_file_line_and_column(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes("uid,sku\nanna,1\njosé,2\n".encode("latin-1"))
    msg = load_error(log)
    assert msg.endswith(
        "log.csv: line 3: column 'uid' (user) is not valid UTF-8 text (save the file as UTF-8)"
    )


def test_non_utf8_in_a_column_not_read_is_no_error(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes("uid,sku,comment\nanna,1,ok\nbob,2,très bien\n".encode("latin-1"))
    df = tabular.load_csv(csv_cfg(log))
    assert df["user"].tolist() == ["anna", "bob"]


def test_non_utf8_header_and_nul(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes("uid,sku,café\n1,2,x\n".encode("latin-1"))
    assert load_error(log).endswith(
        "line 1 (the header) is not valid UTF-8 text (save it as UTF-8)"
    )
    log.write_bytes(b"uid,sku\n1,2\n3\x00,4\n")
    assert load_error(log).endswith(
        "line 3: column 'uid' (user) holds a NUL character (is it a binary file?)"
    )


@pytest.mark.parametrize(
    "blob",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)),
        b"\x1f\x8b\x08\x00" + bytes(range(255, 0, -1)) * 3,
        bytes(range(256)) * 4,
    ],
)
def test_a_binary_file_is_one_clean_line(tmp_path, blob):
    log = tmp_path / "log.csv"
    log.write_bytes(blob)
    load_error(log)
    load_error(log, "data.header=false", "data.columns.user=0", "data.columns.item=1")
    (tmp_path / "beauty").mkdir()
    (tmp_path / "beauty" / "Beauty.txt").write_bytes(blob)
    cfg = OmegaConf.to_container(
        compose_config("data_cli", ["data=amazon-beauty", f"data.root={tmp_path}"]).data,
        resolve=True,
    )
    with pytest.raises(DataError) as e:
        build(cfg, 0)
    assert "Beauty.txt: line" in str(e.value) and "\n" not in str(e.value)


def test_sequences_name_the_line_of_bad_bytes(tmp_path):
    from recsys.data.sources.sequences import parse_user_sequences

    with pytest.raises(DataError, match=r"^f: line 3: not valid UTF-8 text \(byte 0xe9\)"):
        parse_user_sequences(b"1 2 3\n2 3 4\n3 \xe9 5\n", "f")
    with pytest.raises(DataError, match=r"^f: line 2: a NUL character"):
        parse_user_sequences(b"1 2 3\r4 5\x00\r\n", "f")
    df = parse_user_sequences(b"1 2 3\r2 3 4\r", "f")  # old Mac line ends: two users, not one
    assert df["user"].tolist() == [1, 1, 2, 2]


# -- Parquet ---------------------------------------------------------------------------------------
def test_parquet_ids(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"uid": np.array([2**63 - 1, 5, 5]), "sku": ["007", "7", "a"]}).to_parquet(path)
    df = tabular.load_csv(csv_cfg(path))
    assert df["user"].tolist() == ["9223372036854775807", "5", "5"]  # exact decimal text
    assert df["item"].tolist() == ["007", "7", "a"]
    msg = load_error(path, "data.id_type=int")
    assert msg.endswith(
        "row 1: column 'sku' (item) must be a non-negative integer id (plain digits "
        "without sign, spaces or leading zeros, below 2**63); data.id_type=str "
        "keeps ids exactly as written, got '007'"
    )


def test_a_float_id_column_in_parquet_is_refused_naming_it(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"uid": [1.0, 2.0, None], "sku": [1, 2, 3]}).to_parquet(path)
    msg = load_error(path)
    assert "row 3: missing value in column 'uid' (user)" in msg
    pd.DataFrame({"uid": [1.0, 2.0, 3.5], "sku": [1, 2, 3]}).to_parquet(path)
    msg = load_error(path)
    assert "column 'uid' (user) holds double values; ids must be integers or strings" in msg
    assert msg.endswith("write it as int64 or string")


# -- encoding, the cache and the pipeline keep string ids -----------------------------------------
def test_encode_ids_refuses_floats_and_mixed_ids():
    with pytest.raises(DataError, match="ids are floating-point numbers"):
        encode_ids(np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="ids must be all integers or all strings, got int, str"):
        encode_ids(np.array(["a", 1], dtype=object))
    ids, inverse = encode_ids(np.array(["b", "10", "9", "b"], dtype=object))
    assert ids.tolist() == ["10", "9", "b"] and inverse.tolist() == [2, 0, 1, 2]


def test_string_ids_through_the_cache(tmp_path):
    log = tmp_path / "log.csv"
    rows = [(u, i) for u in ("007", "7", "3.5", BIG, BIG[:-1] + "1") for i in ("x", "y", "z")]
    log.write_text("uid,sku\n" + "".join(f"{u},{i}\n" for u, i in rows))
    cfg = csv_cfg(log, f"data.cache_dir={tmp_path / 'cache'}", "data.split=random")
    fresh = build(cfg, 0)
    prepare(cfg, 0)
    cached = prepare(cfg, 0)
    assert cached.train.user_ids.tolist() == fresh.train.user_ids.tolist()
    assert sorted(cached.train.user_ids.tolist()) == sorted({u for u, _ in rows})
    assert cached.train.user_ids.dtype.kind == "U"


def test_config_checks_come_before_any_file_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.path must be set for this dataset"):
        check_config(OmegaConf.to_container(compose_config("data_cli", ["data=csv"]).data))
    with pytest.raises(ConfigError, match=r"^data.name must be set for this dataset"):
        resolve_data_config(compose_config("data_cli", ["data=atomic"]).data)
    with pytest.raises(ConfigError, match=r"^data.columns.time: column 'uid' is already"):
        check_config(csv_cfg(tmp_path / "absent.csv", "data.columns.time=uid"))
    with pytest.raises(ConfigError, match=r"^data.format must be one of"):
        check_config(csv_cfg(tmp_path / "absent.csv", "data.format=xlsx"))
    with pytest.raises(ConfigError, match=r"^data.sep must be a field separator"):
        check_config(csv_cfg(tmp_path / "absent.csv", "data.sep='\"'"))
    assert files.ID_TYPES == ("str", "int")


def test_the_line_named_counts_blank_lines_quoted_newlines_and_lone_cr(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text('uid,sku,ts\n1,a,5\n\n2,"b\nc",6\n\n3,d,x\n', newline="")
    assert load_error(log, "data.columns.time=ts").endswith(
        "log.csv: line 7: column 'ts' (time) must be a number, got 'x'"
    )
    log.write_text("uid,sku,ts\r1,a,5\r\r2,b,inf\r", newline="")
    assert load_error(log, "data.columns.time=ts").endswith(
        "log.csv: line 4: column 'ts' (time) must be a finite number, got 'inf'"
    )
    log.write_text("uid,sku\r\n1,a\r\n\r\n2,b,c\r\n", newline="")
    assert load_error(log).endswith("log.csv: line 4: expected 2 fields, found 3")
    log.write_bytes("uid,sku\n1,a\n2,b\n\nbjörn,c\n".encode("latin-1"))
    assert load_error(log).endswith(
        "log.csv: line 5: column 'uid' (user) is not valid UTF-8 text (save the file as UTF-8)"
    )
