"""``manifest.json``: what produced a run directory, written at the start and completed at the end.

Holds the resolved config, the data fingerprint (hash of the data config values that determine
the prepared data and split, see :func:`recsys.data.pipeline.fingerprint`), the git commit of the
code when it is a git checkout, package versions, device, seed, and start and end times.
``recsys-compare`` refuses to compare runs whose fingerprints differ.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

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
