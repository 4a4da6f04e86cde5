"""The runs being compared: each run directory's ``metrics.json``, config and per-user test
values; finding them under sweep directories, refusing runs of different data, and grouping the
runs whose configs differ only in ``seed``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import CheckpointError, DataError
from recsys.training.manifest import run_state

# Config keys that never make two runs different experiments.
IGNORED_PREFIXES = (
    "seed",
    "paths.",
    "ckpt_path",
    "logger.",
    "callbacks.epoch_summary",
    "callbacks.optuna_pruning",  # the trial a sweep run reports to, not a setting
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.accelerator",
    "optimized_metric",
    "hydra.",
)


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    split: str | None = None  # content hash of the prepared split (manifest.json), when known

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def fingerprint(self) -> str | None:
        return (self.metrics.get("data") or {}).get("fingerprint")

    def per_user(self) -> dict[str, np.ndarray]:
        path = self.path / "per_user_test.npz"
        if not path.is_file():
            raise DataError(f"{path}: missing (per-user test metrics are needed for the tests)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise DataError(f"{path}: not a readable per-user metrics file ({e})") from None


@dataclass
class Group:
    key: tuple
    runs: list[Run]
    label: str = ""
    flat: dict[str, Any] = field(default_factory=dict)

    def values(self, split: str, metric: str) -> np.ndarray:
        return np.array(
            [
                float(r.metrics[split][metric])
                for r in self.runs
                if metric in r.metrics.get(split, {})
            ]
        )

    def user_means(self, metric: str) -> dict[Any, float]:
        """Each user's value of ``metric`` averaged over this group's seeds, keyed by user, when
        every seed evaluated the same users (a fixed split); otherwise (a seeded split: held-out
        users, cold items) one value per (seed, user), so runs on the same seed pair user by
        user.

        An item-slice metric (``cold/recall@20``) has a value for the users with a target in
        the slice only (NaN for the others, who are left out)."""
        tables = []
        for r in self.runs:
            pu = r.per_user()
            if metric not in pu:
                raise DataError(f"{r.path / 'per_user_test.npz'}: no per-user values of {metric}")
            values = pu[metric].astype(np.float64)
            keep = ~np.isnan(values)
            tables.append(dict(zip(pu["user"][keep].tolist(), values[keep].tolist(), strict=True)))
        common = set(tables[0]).intersection(*tables[1:])
        if all(len(t) == len(common) for t in tables):
            return {u: float(np.mean([t[u] for t in tables])) for u in common}
        return {
            (r.seed, u): v for r, t in zip(self.runs, tables, strict=True) for u, v in t.items()
        }


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def load_run(path: Path) -> Run:
    metrics_path = path / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{metrics_path}: not a readable metrics.json ({e})") from None
    config: dict[str, Any] = {}
    split = None
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest}: not a readable manifest.json ({e})") from None
        config = m.get("config") or {}
        split = (m.get("data") or {}).get("split_fingerprint")
    elif (path / ".hydra" / "config.yaml").is_file():
        config = _load_yaml(path / ".hydra" / "config.yaml")
    if not config:
        config = {"model": {"_target_": metrics.get("model", "?")}}
    return Run(path, metrics, config, split)


def _run_dirs(sweep: Path) -> list[Path]:
    """Run directories under ``sweep``: folders holding a ``metrics.json`` or a ``manifest.json``
    (an unfinished run has only the latter), not an exported artifact (it holds copies)."""
    found = {m.parent for name in ("metrics.json", "manifest.json") for m in sweep.rglob(name)}
    return sorted((d for d in found if not (d / "artifact.json").is_file()), key=str)


def find_runs(paths: list[str], allow_unfinished: bool = False) -> tuple[list[Run], list[str]]:
    """Runs under ``paths`` (run directories, or sweep directories holding them).

    A run whose ``manifest.json`` does not say ``finished`` (interrupted, killed, still running)
    is refused by name unless ``allow_unfinished``: then those with a ``metrics.json`` are
    compared and the others skipped, each with a note. A failed run of a sweep is skipped with a
    note (the sweep recorded it and went on)."""
    runs, notes = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"{p}: no such run or sweep directory")
        if (p / "metrics.json").is_file() or (p / "manifest.json").is_file():
            status, why = run_state(p) or ("finished", "")
            if status != "finished":
                if not allow_unfinished:
                    raise CheckpointError(
                        f"{p}: run is {status}" + (f" ({why})" if why else "") + "; compare "
                        "finished runs only (--allow-unfinished to compare it anyway)"
                    )
                notes.append(f"{status} run included (--allow-unfinished): {p}")
            if not (p / "metrics.json").is_file():
                raise DataError(f"{p}: no metrics.json (the run is {status})")
            runs.append(load_run(p))
            continue
        found = _run_dirs(p)
        if not found:
            raise DataError(f"{p}: holds no run (no metrics.json below it)")
        failures = sorted((p / "failures").glob("*.json")) if (p / "failures").is_dir() else []
        recorded = set()
        for fail in failures:
            info = json.loads(fail.read_text())
            if info.get("output_dir"):
                recorded.add(Path(info["output_dir"]).resolve())
            notes.append(
                f"failed run skipped: job {info.get('job')} ({' '.join(info.get('overrides', []))})"
            )
        unfinished = []
        for d in found:
            status, why = run_state(d) or ("finished", "")
            if status == "finished":
                if (d / "metrics.json").is_file():
                    runs.append(load_run(d))
                else:
                    notes.append(f"run skipped: {d} says finished but has no metrics.json")
            elif status == "failed":
                if d.resolve() not in recorded:
                    notes.append(f"failed run skipped: {d}" + (f" ({why})" if why else ""))
            else:
                unfinished.append((d, status, why))
        if unfinished and not allow_unfinished:
            d, status, why = unfinished[0]
            more = f" and {len(unfinished) - 1} more" if len(unfinished) > 1 else ""
            raise CheckpointError(
                f"{d}: run is {status}" + (f" ({why})" if why else "") + f"{more} under {p}; "
                "compare finished runs only (--allow-unfinished compares the others that "
                "have a metrics.json and skips the rest)"
            )
        for d, status, _ in unfinished:
            if (d / "metrics.json").is_file():
                runs.append(load_run(d))
                notes.append(f"{status} run included (--allow-unfinished): {d}")
            else:
                notes.append(f"{status} run skipped: {d} (no metrics.json)")
    return runs, notes


def check_fingerprints(runs: list[Run]) -> None:
    prints: dict[str | None, list[Path]] = {}
    for r in runs:
        prints.setdefault(r.fingerprint, []).append(r.path)
    if len(prints) > 1:
        lines = [
            f"  {fp}: {', '.join(map(str, ps[:3]))}{' ...' if len(ps) > 3 else ''}"
            for fp, ps in prints.items()
        ]
        raise DataError(
            "runs were evaluated on different data or splits (data fingerprints differ); "
            "compare runs of one dataset and split only:\n" + "\n".join(lines)
        )
    # same config fingerprint and seed, yet different prepared data: the raw files changed
    by_seed: dict[Any, dict[str, Path]] = {}
    for r in runs:
        if r.split:
            by_seed.setdefault(r.seed, {}).setdefault(r.split, r.path)
    for seed, splits in by_seed.items():
        if len(splits) > 1:
            paths = ", ".join(f"{p} ({fp})" for fp, p in splits.items())
            raise DataError(
                f"runs with seed {seed} were evaluated on different prepared data (split fingerprints "
                f"differ although the data config is the same: the raw files changed?): {paths}"
            )


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        flat = {k: v for k, v in flatten(r.config).items() if not k.startswith(IGNORED_PREFIXES)}
        key = tuple(sorted((k, str(v)) for k, v in flat.items()))
        groups.setdefault(key, Group(key, [], flat=flat)).runs.append(r)
    out = list(groups.values())
    # label = model name + the settings that vary: model keys between groups of the same model,
    # other keys (optim, data, trainer, ...) between all groups having them
    varying = set()
    all_keys = {k for g in out for k in g.flat}
    for k in all_keys:
        if k == "model._target_":
            continue
        scope: dict[Any, set[str]] = {}
        for g in out:
            if k in g.flat:
                model = g.flat.get("model._target_") if k.startswith("model.") else None
                scope.setdefault(model, set()).add(str(g.flat[k]))
        if any(len(v) > 1 for v in scope.values()):
            varying.add(k)
    for g in out:
        name = str(g.flat.get("model._target_", "?")).rpartition(".")[2].lower()
        extra = [f"{k.removeprefix('model.')}={g.flat[k]}" for k in sorted(varying) if k in g.flat]
        g.label = " ".join([name, *extra])
    labels = [g.label for g in out]
    for g in out:  # identical labels (e.g. identical configs from two sweeps): disambiguate
        if labels.count(g.label) > 1:
            g.label += f" [{g.runs[0].path.parent.name}/{g.runs[0].path.name}]"
    return sorted(out, key=lambda g: g.label)


def default_out(paths: list[str]) -> Path:
    """Where a comparison is written by default: the single sweep directory given, else ``.``."""
    if len(paths) == 1 and not (Path(paths[0]) / "metrics.json").is_file():
        return Path(paths[0])
    return Path(".")
