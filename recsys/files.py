"""Atomic file writes: a temporary file in the target's folder, then a rename.

A reader (or a crashed writer) never sees a half-written cache, metrics file or artifact. A writer
killed before its rename (SIGKILL, power loss) cannot remove its temporary file, so the name
says whose it is: ``.<target name>.<scope>.<pid>-<start>.<random>.tmp``, with the writer's
machine and process namespace (``<scope>``: host name and pid-namespace inode), its process id
and that process's start time (``/proc``; 0 where unknown), so a recycled pid does not pass for
the dead writer. :func:`remove_stale_temps` deletes the files of exactly that pattern, written
in this scope, whose writer is no longer running; every write into a folder does it first, so a
temporary file never outlives the next start of a command that writes there. A file written
from another machine or container sharing the folder (NFS, a mounted volume) is left alone: its
pid means nothing here, and deleting a live writer's file would break its write.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# .<name>.<scope>.<pid>-<start>.<random>.tmp; the random part is mkstemp's (8 of [a-z0-9_])
TEMP_PATTERN = re.compile(
    r"^\.(?P<name>.+)\.(?P<scope>[A-Za-z0-9-]+)\.(?P<pid>[1-9][0-9]*)-(?P<start>[0-9]+)"
    r"\.[a-z0-9_]{8}\.tmp$"
)


def _scope() -> str:
    """Where pids mean something: the host name (letters, digits and '-') and the inode of this
    process's pid namespace (0 without ``/proc``)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{host}-{namespace}"


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks after boot (``/proc/<pid>/stat`` field
    22), or None when there is no such process or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _writer_tag() -> str:
    """``<scope>.<pid>-<start>`` of this process (computed per call: a forked child has its
    own)."""
    pid = os.getpid()
    return f"{_scope()}.{pid}-{_start_time(pid) or 0}"


def _running(pid: int, start: int) -> bool:
    """Whether the process that wrote a temporary file tagged ``pid``-``start`` still runs. When
    in doubt (no ``/proc``, another user's process, Windows) it counts as running."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    now = _start_time(pid)
    if now is not None:
        return start == 0 or now == start
    if Path("/proc/self/stat").exists():
        return False  # /proc works and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` whose writer process is
    no longer running; only names of that exact pattern written in this scope (this machine and
    pid namespace) are touched, nothing else (a live writer's file stays). Returns the removed
    paths; a missing folder removes nothing."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    scope = _scope()
    for entry in entries:
        m = TEMP_PATTERN.match(entry.name)
        if m is None or m["scope"] != scope:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if _running(int(m["pid"]), int(m["start"])):
                continue
            os.unlink(entry.path)
        except OSError:  # gone already, or not ours to delete
            continue
        removed.append(Path(entry.path))
    return removed


def new_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file in ``folder`` named for ``name`` and this process (the pattern
    :func:`remove_stale_temps` cleans): ``(fd, path)`` as :func:`tempfile.mkstemp` returns."""
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.{_writer_tag()}.", suffix=".tmp")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary binary file next to ``path``, fsync it, rename it to
    ``path``; on any failure the temporary file is removed and ``path`` is left untouched.
    Stale temporary files of dead writers in the folder are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = new_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are as readable as their folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (see :func:`atomic_write`)."""
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
