"""recsys.files: temporary files named by their writer, and removed once that writer is gone
(only files of exactly that pattern written on this machine; a live writer's file stays, and so
does a file another machine wrote into a shared folder)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recsys import files
from recsys.data.cache import cache_dir
from recsys.files import TEMP_PATTERN, atomic_write, remove_stale_temps, write_json


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def own_tag() -> str:
    return files._writer_tag()


SCOPE = files._scope()


def test_temporary_file_is_named_by_its_writer(tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write(b"x")

    atomic_write(tmp_path / "out.json", write)
    assert len(seen) == 1
    m = TEMP_PATTERN.match(seen[0])
    assert m and m["name"] == "out.json"
    assert f"{m['scope']}.{m['pid']}-{m['start']}" == own_tag()
    assert int(m["pid"]) == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_leaves_nothing(tmp_path):
    def write(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.bin", write)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    pid = dead_pid()
    own_pid, own_start = own_tag().rsplit(".", 1)[1].split("-")
    stale = [
        f".split.npz.{SCOPE}.{pid}-123.abcdefgh.tmp",  # its writer exited
        f".metrics.json.{SCOPE}.{pid}-0.a1b2c3d_.tmp",  # start time unknown, writer gone
        # this process's pid with another start time: a recycled pid (a restarted container)
        f".x.{SCOPE}.{own_pid}-{int(own_start) + 1}.zzzzzzzz.tmp",
    ]
    kept = [
        f".split.npz.{SCOPE}.{own_pid}-{own_start}.abcdefgh.tmp",  # a live writer (this process)
        f".split.npz.other-host-1.{pid}-123.abcdefgh.tmp",  # another machine's: pid unknown here
        f".split.npz.{pid}-123.abcdefgh.tmp",  # no scope
        f".split.npz.{pid}.abcdefgh.tmp",  # the older mkstemp name
        f".split.npz.{SCOPE}.{pid}-1.ABCDEFGH.tmp",  # not mkstemp's random part
        f"split.npz.{SCOPE}.{pid}-1.abcdefgh.tmp",  # no leading dot
        f".split.npz.{SCOPE}.{pid}-1.abcdefgh.tmp.bak",
        ".probe-x1y2z3.tmp",
        "notes.txt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    folder = f".dir.{SCOPE}.{pid}-1.abcdefgh.tmp"  # a folder of that name: not a file of ours
    (tmp_path / folder).mkdir()
    kept.append(folder)
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_every_atomic_write_cleans_its_folder_first(tmp_path):
    stale = tmp_path / f".metrics.json.{SCOPE}.{dead_pid()}-5.abcdefgh.tmp"
    stale.write_text("half")
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert not stale.exists() and (tmp_path / "metrics.json").is_file()


def test_cache_dir_is_cleaned_when_chosen(tmp_path):
    stale = tmp_path / "cache" / f".ml-100k-0123.npz.{SCOPE}.{dead_pid()}-7.abcdefgh.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"PK\x03\x04 half a zip")
    other = tmp_path / "cache" / "ml-100k-0123.npz"
    other.write_bytes(b"kept")
    assert cache_dir({}, tmp_path) == tmp_path / "cache"
    assert not stale.exists() and other.read_bytes() == b"kept"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [other.name]  # the probe is gone


def test_a_process_that_is_killed_leaves_a_file_the_next_start_removes(tmp_path):
    """A writer killed inside atomic_write (here it exits hard mid-write) leaves its
    temporary file; the next write into the folder removes it."""
    code = (
        "import os, sys\n"
        "from recsys.files import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'half')\n"
        "    f.flush()\n"
        "    os._exit(9)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.bin")], timeout=120)
    assert r.returncode == 9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and TEMP_PATTERN.match(left[0])
    atomic_write(tmp_path / "other.bin", lambda f: f.write(b"ok"))
    assert [p.name for p in tmp_path.iterdir()] == ["other.bin"]
