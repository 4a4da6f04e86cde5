"""``manifest.json``: what produced a run directory, written at the start and completed at the end.

Holds the resolved config, the data fingerprint (hash of the data config values that determine
the prepared data and split, see :func:`recsys.data.pipeline.fingerprint`), the git commit of the
code when it is a git checkout, package versions, device, seed, and start and end times.
``recsys-compare`` refuses to compare runs whose fingerprints differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from recsys.errors import CheckpointError
from recsys.files import write_json

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


def end_manifest(run_dir: Path, manifest: dict[str, Any], **extra: Any) -> None:
    """Record the end time (and e.g. the TensorBoard directory) of a finished run."""
    manifest.update(extra, end_time=_now(), status="finished")
    write_json(Path(run_dir) / "manifest.json", manifest)


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
