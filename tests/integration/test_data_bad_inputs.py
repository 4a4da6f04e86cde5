"""Bad inputs as a user meets them: ``recsys-data`` in a subprocess on a broken log exits with
status 2 and one ``error:`` line naming the file, line and column (or the config key), never a
traceback; an opt-out list with ids the log does not hold says how many, not which."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.test_data_cli import recsys_data


def one_error_line(r, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def csv_args(path, *extra: str) -> list[str]:
    return [
        "stats",
        "data=csv",
        f"data.path={path}",
        "data.columns.user=uid",
        "data.columns.item=sku",
        f"data.cache_dir={path.parent / 'cache'}",
        *extra,
    ]


LOG = "uid,sku\n1,10\n2,11\n3.5,12\n4,13\n"


@pytest.mark.parametrize(
    "content, extra, needles",
    [
        (  # one 3.5 among integer ids, declared int
            LOG,
            ["data.id_type=int"],
            ["log.csv: line 4: column 'uid' (user) must be a non-negative integer id", "'3.5'"],
        ),
        pytest.param(  # an id beyond int64, declared int
            "uid,sku\n1,10\n2,11\n98765432109876543210,12\n",
            ["data.id_type=int"],
            ["log.csv: line 4: column 'uid' (user)", "below 2**63", "'98765432109876543210'"],
            marks=pytest.mark.slow,
        ),
        (  # Latin-1 text where UTF-8 is expected
            "uid,sku\nanna,10\nbob,11\njosé,12\n".encode("latin-1"),
            [],
            ["log.csv: line 4: column 'uid' (user) is not valid UTF-8 text"],
        ),
        pytest.param(  # a binary file given as the log
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
            [],
            ["log.csv: line 1 (the header) is not valid UTF-8 text"],
            marks=pytest.mark.slow,
        ),
        pytest.param(  # a NUL character inside an id
            b"uid,sku\n1,10\n2\x00,11\n",
            [],
            ["log.csv: line 3: column 'uid' (user) holds a NUL character"],
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_broken_log_is_one_line_exit_2(tmp_path, content, extra, needles):
    log = tmp_path / "log.csv"
    log.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = recsys_data(*csv_args(log, *extra), cwd=tmp_path)
    one_error_line(r, str(log), *needles)
    assert not list((tmp_path / "cache").glob("*.npz"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["data=atomic"], "error: data.name must be set for this dataset (add data.name=...)"),
        pytest.param(
            ["data=csv"],
            "error: data.path must be set for this dataset (add data.path=...)",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["data=csv", "data.path=log.csv", "data.id_type=auto"],
            "error: data.id_type=auto is no longer accepted",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["data=csv", "data.path=log.csv", "data.columns.item=null"],
            "error: data.columns.item: the csv source needs the item column",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_config_that_cannot_work_is_named_before_any_file_is_read(tmp_path, args, message):
    r = recsys_data("stats", *args, f"data.root={tmp_path / 'absent'}", cwd=tmp_path)
    assert one_error_line(r).startswith(message)
    assert not (tmp_path / "absent").exists()


@pytest.mark.slow
def test_the_documented_3_5_log_loads_as_written_by_default(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "uid,sku\n" + "".join(f"{u},{i}\n" for u in ("1", "2", "3.5", "007") for i in "abc")
    )
    r = recsys_data(*csv_args(log, "json=true", "data.split=random"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["users"] == 4


def test_optout_ids_not_found_are_counted_not_named(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "uid,sku\n" + "".join(f"{u},{i}\n" for u in ("007", "8", "9", "10") for i in "abc")
    )
    listed = tmp_path / "optout.txt"
    listed.write_text("007\n7\nghost-42\n")
    r = recsys_data(
        *csv_args(log, "json=true", "data.split=random", f"data.exclude_users={listed}"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    notice = [x for x in r.stderr.splitlines() if "exclude_users" in x]
    assert notice == [
        "data.exclude_users: 2 of 3 listed ids match no user in the log (ids match exactly as "
        "written: 007 is not 7)"
    ]
    assert "ghost-42" not in r.stderr and "ghost-42" not in r.stdout
    stats = json.loads(r.stdout)
    assert stats["users"] == 3
    assert stats["audit"]["opt_out"]["not_found"] == 2
    assert stats["audit"]["opt_out"]["users_removed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["data=atomic"], "error: data.name must be set for this dataset (add data.name=...)"),
        (["data=csv"], "error: data.path must be set for this dataset (add data.path=...)"),
    ],
)
def test_recsys_train_names_the_missing_data_key(tmp_path, args, message):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            *args,
            f"data.root={tmp_path / 'absent'}",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert errors == [message]
    assert not (tmp_path / "absent").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()
