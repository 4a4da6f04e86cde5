"""Opt-out ids match the log's ids exactly as written (string ids and integer ids alike), and
the run says how many listed ids matched nobody (a notice and ``not_found`` in the audit), never
which."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from recsys.data import optout
from recsys.data.interactions import Interactions, Split
from recsys.data.pipeline import build, prepare
from tests.conftest import compose_config

USERS = ["007", "7", "a b", "12345678901234567890", "12345678901234567891", "x"]


def csv_cfg(tmp_path, optout_file, *overrides: str) -> dict:
    log = tmp_path / "log.csv"
    if not log.exists():
        log.write_text("uid,sku\n" + "".join(f"{u},{i}\n" for u in USERS for i in "pqr"))
    cfg = compose_config(
        "data_cli",
        [
            "data=csv",
            f"data.path={log}",
            "data.columns.user=uid",
            "data.columns.item=sku",
            "data.split=random",
            f"data.exclude_users={optout_file}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )
    return OmegaConf.to_container(cfg.data, resolve=True)


def test_string_ids_match_as_written(tmp_path, capsys):
    listed = tmp_path / "optout.txt"
    # a BOM, CRLF line ends, surrounding spaces, a comment: the list file's formatting
    listed.write_bytes("\ufeff007\r\n  12345678901234567891  \n# comment\n12\n7.0\n".encode())
    split = build(csv_cfg(tmp_path, listed), 0)
    kept = set(split.train.user_ids.tolist())
    assert kept == {"7", "a b", "12345678901234567890", "x"}  # 007 is not 7; BIG+1 is not BIG
    info = split.audit["opt_out"]
    assert info["users_listed"] == 4 and info["users_removed"] == 2
    assert info["events_removed"] == 6 and info["not_found"] == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if "exclude_users" in x]
    assert lines == [
        "data.exclude_users: 2 of 4 listed ids match no user in the log (ids match exactly as "
        "written: 007 is not 7)"
    ]  # counts only: the ids not found (12, 7.0) are never printed


def test_integer_ids_match_their_decimal_text(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("uid,sku\n" + "".join(f"{u},{i}\n" for u in (3, 7, 12, 40) for i in (1, 2, 3)))
    listed = tmp_path / "optout.txt"
    listed.write_text("7\n007\n12.0\n40\n")
    split = build(csv_cfg(tmp_path, listed, "data.id_type=int"), 0)
    assert sorted(split.train.user_ids.tolist()) == [3, 12]
    assert split.audit["opt_out"]["not_found"] == 2 and split.audit["opt_out"]["users_removed"] == 2


def test_the_count_is_repeated_on_a_cache_hit(tmp_path, capsys):
    listed = tmp_path / "optout.txt"
    listed.write_text("nobody\n")
    cfg = csv_cfg(tmp_path, listed)
    prepare(cfg, 0)
    first = capsys.readouterr().err
    again = prepare(cfg, 0)
    second = capsys.readouterr().err
    line = "data.exclude_users: 1 of 1 listed ids match no user in the log"
    assert line in first and line in second and "reusing cached" in second
    assert again.audit["opt_out"]["not_found"] == 1


def test_all_found_prints_nothing(tmp_path, capsys):
    listed = tmp_path / "optout.txt"
    listed.write_text("x\n")
    split = build(csv_cfg(tmp_path, listed), 0)
    assert split.audit["opt_out"]["not_found"] == 0
    assert "exclude_users" not in capsys.readouterr().err


def test_ready_splits_count_ids_not_found(tmp_path, capsys):
    def part(users):
        users = np.asarray(users)
        return Interactions(
            user=users,
            item=np.zeros(len(users), dtype=np.int64),
            time=None,
            rating=None,
            user_ids=np.array([10, 20, 30]),
            item_ids=np.array([5]),
        )

    split = Split(train=part([0, 1, 2]), val=part([0]), test=part([1]), name="fold")
    listed = tmp_path / "optout.txt"
    listed.write_text("20\n99\n")
    out, info = optout.exclude_split(split, {"exclude_users": str(listed)})
    assert out.train.user_ids.tolist() == [10, 30]
    assert info["users_removed"] == 1 and info["not_found"] == 1
    assert "1 of 2 listed ids match no user" in capsys.readouterr().err


def test_frame_exclusion_keeps_the_other_rows_in_order(tmp_path):
    listed = tmp_path / "optout.txt"
    listed.write_text("b\n")
    df = pd.DataFrame({"user": np.array(["a", "b", "c", "b"], dtype=object), "item": [1, 2, 3, 4]})
    out, info = optout.exclude(df, {"exclude_users": str(listed)})
    assert out["user"].tolist() == ["a", "c"] and out["item"].tolist() == [1, 3]
    assert info["events_removed"] == 2 and info["not_found"] == 0
