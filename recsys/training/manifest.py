"""``manifest.json``: what produced a run directory, written at the start and completed at the end.

Holds the resolved config, the data fingerprint (hash of the data config values that determine
the prepared data and split, see :func:`recsys.data.pipeline.fingerprint`), the git commit of the
code when it is a git checkout, package versions, device, seed, and start and end times.
``recsys-compare`` refuses to compare runs whose fingerprints differ.

``status`` says how the run ended: ``running`` while it works, then ``finished``, ``failed``
(with ``reason``, the one-line error) or ``interrupted`` (SIGINT/SIGTERM, :func:`interruptible`
and :func:`recording_end`). A run killed outright (SIGKILL, power loss) stays ``running``;
:func:`run_state` reports it as ``killed`` once its process is gone. Commands that consume a run
refuse one that is not ``finished`` (:func:`require_finished`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from recsys.errors import CheckpointError, Interrupted, RecsysError
from recsys.files import write_json

log = logging.getLogger("recsys")

PACKAGES = (
    "recsys",
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "numpy",
    "pandas",
    "scipy",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path | None = None) -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout holding the code, or None outside a git checkout."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def split_fingerprint(split: Any) -> str:
    """A short hash of the prepared split's content (user, item of train/val/test and fold-in
    parts, and the id maps): it changes when the raw files, the preprocessing or the split do."""
    import numpy as np

    h = hashlib.sha256()
    for name in ("train", "val", "test", "val_input", "test_input"):
        part = getattr(split, name, None)
        h.update(name.encode())
        if part is None:
            continue
        for arr in (part.user, part.item):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    for ids in (split.train.user_ids, split.train.item_ids):
        h.update(np.asarray(ids).astype(str).tobytes())
    return h.hexdigest()[:16]


def start_manifest(
    run_dir: Path, config: dict[str, Any], fingerprint: str, device: str, split: str | None = None
) -> dict[str, Any]:
    """Write ``manifest.json`` for a starting run and return it (completed by :func:`end_manifest`).

    ``fingerprint`` hashes the data config values; ``split`` (from :func:`split_fingerprint`)
    the prepared data itself.
    """
    manifest = {
        "config": config,
        "data": {
            "name": config.get("data", {}).get("name"),
            "fingerprint": fingerprint,
            "split_fingerprint": split,
        },
        "seed": config.get("seed"),
        "git": git_state(),
        "versions": package_versions(),
        "device": device,
        "host": platform.node(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "start_time": _now(),
        "end_time": None,
        "status": "running",
    }
    write_json(Path(run_dir) / "manifest.json", manifest)
    return manifest


def end_manifest(
    run_dir: Path,
    manifest: dict[str, Any],
    status: str = "finished",
    reason: str | None = None,
    **extra: Any,
) -> None:
    """Record how a run ended (``finished``, ``failed`` or ``interrupted``, with the one-line
    ``reason`` of an unfinished one), its end time and e.g. the TensorBoard directory."""
    manifest.update(extra, end_time=_now(), status=status)
    manifest.pop("reason", None)
    if reason:
        manifest["reason"] = reason
    write_json(Path(run_dir) / "manifest.json", manifest)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        yield e
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def interruption(exc: BaseException) -> Interrupted | None:
    """The :class:`~recsys.errors.Interrupted` behind ``exc``: a signal that arrived inside
    code that turns any exception into its own (``torch.save`` raises a RuntimeError when its
    writer is interrupted) is still an interruption."""
    return next((e for e in _chain(exc) if isinstance(e, Interrupted)), None)


def one_line(exc: BaseException) -> str:
    """The one-line reason of a failure: a user error's message, else ``Type: first line``."""
    for e in _chain(exc):  # Hydra wraps errors raised while instantiating
        if isinstance(e, RecsysError | Interrupted):
            return " ".join(str(e).split())
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`~recsys.errors.Interrupted`; a
    second signal while the first unwinds is ignored, so the end gets recorded, and a third
    raises again (code that swallowed the first cannot hold the process). Lightning
    would turn a ``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)`` and a SIGTERM into a
    ``SystemExit`` with status 0 at the next batch; an exception of our own passes through
    ``fit`` unchanged (its ``on_exception`` hooks run) and says which signal it was. Outside the
    main thread signals cannot be handled and the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        fired.append(signum)
        if len(fired) != 2:
            raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def recording_end(
    run_dir: Path, manifest: dict[str, Any], unfinished: Iterable[str] = ()
) -> Iterator[None]:
    """Around the work of a started run: an exception leaving the block records the run as
    ``interrupted`` (SIGINT/SIGTERM, also when another error wraps it, and Lightning's
    ``SystemExit`` after one) or ``failed`` with the one-line reason, removes the files in
    ``unfinished`` (what only a finished run has, e.g. ``metrics.json``: nothing
    finished-looking is left behind), and propagates (an interruption as itself)."""
    try:
        yield
    except BaseException as e:
        for name in unfinished:
            (Path(run_dir) / name).unlink(missing_ok=True)
        signalled = interruption(e)
        status, reason = "interrupted", one_line(signalled or e)
        if isinstance(e, KeyboardInterrupt):
            reason = "interrupted by SIGINT"
        elif isinstance(e, SystemExit):
            reason = f"stopped by SystemExit({e.code!r})"
        elif signalled is None:
            status = "failed"
        try:
            end_manifest(run_dir, manifest, status, reason)
        except Exception as w:  # noqa: BLE001 - the run's own error is the one to report
            log.warning("could not record the end of the run in %s: %s", run_dir, w)
        if signalled is not None and signalled is not e:
            raise signalled from None
        raise


def _process_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def run_state(run_dir: Path) -> tuple[str, str] | None:
    """``(status, why)`` of the run in ``run_dir`` from its ``manifest.json``, or None when it
    has none (a checkpoint from elsewhere). A ``running`` run whose process on this host is gone
    was killed: its status is reported as ``killed``."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        status = str(manifest["status"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a readable manifest.json") from None
    why = str(manifest.get("reason") or "")
    if status == "running" and manifest.get("host") == platform.node():
        if not _process_alive(manifest.get("pid")):
            return "killed", f"its process {manifest.get('pid')} ended without recording an end"
    return status, why


def require_finished(run_dir: Path, key: str, allow_unfinished: bool = False) -> None:
    """Refuse (one line naming ``key``) a run whose manifest does not say ``finished``: its
    checkpoint is whatever the last epoch before the end left. ``allow_unfinished`` takes it
    anyway, with a notice on stderr. A run directory without a manifest is not checked."""
    state = run_state(run_dir)
    if state is None or state[0] == "finished":
        return
    status, why = state
    what = f"run {run_dir} is {status}" + (f" ({why})" if why else "")
    if not allow_unfinished:
        raise CheckpointError(
            f"{key}: {what}; its checkpoint is not a finished run's "
            "(set allow_unfinished=true to use it anyway)"
        )
    print(f"warning: {what}; using its checkpoint (allow_unfinished=true)", file=sys.stderr)
