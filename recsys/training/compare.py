"""``recsys-compare``: which configuration won, and is the difference real?

    recsys-compare multirun/2026-11-24/12-00-00                 # every run of a sweep
    recsys-compare outputs/a outputs/b outputs/c --metric test/recall@20 --baseline popularity

Reads each run's ``metrics.json`` and ``per_user_test.npz``, groups the runs whose configs differ
only in ``seed``, and reports per group the mean ± std over seeds of the chosen metrics. For the
primary metric each group is compared with the baseline group over per-user values (each user's
value averaged over the group's seeds; users evaluated in both groups): a paired t-test and a
Wilcoxon signed-rank test, with Holm's step-down correction across the compared rows. Writes
``compare.md``, ``compare.csv`` and ``compare.png`` (primary metric per group with ± std error
bars). Runs whose data fingerprints differ are refused: their metrics are not comparable.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError

# Config keys that never make two runs different experiments.
IGNORED_PREFIXES = (
    "seed",
    "paths.",
    "ckpt_path",
    "logger.",
    "callbacks.epoch_summary",
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

    def user_means(self, metric: str) -> dict[int, float]:
        """Each user's value of ``metric`` averaged over this group's seeds (users all seeds have)."""
        tables = []
        for r in self.runs:
            pu = r.per_user()
            if metric not in pu:
                raise DataError(f"{r.path / 'per_user_test.npz'}: no per-user values of {metric}")
            tables.append(
                dict(zip(pu["user"].tolist(), pu[metric].astype(np.float64).tolist(), strict=False))
            )
        common = set(tables[0]).intersection(*tables[1:])
        return {u: float(np.mean([t[u] for t in tables])) for u in common}


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


def find_runs(paths: list[str]) -> tuple[list[Run], list[str]]:
    """Runs under ``paths`` (run directories, or sweep directories holding them)."""
    runs, notes = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"{p}: no such run or sweep directory")
        if (p / "metrics.json").is_file():
            runs.append(load_run(p))
            continue
        found = sorted({m.parent for m in p.rglob("metrics.json")}, key=lambda x: str(x))
        if not found:
            raise DataError(f"{p}: holds no run (no metrics.json below it)")
        runs.extend(load_run(f) for f in found)
        for fail in sorted((p / "failures").glob("*.json")) if (p / "failures").is_dir() else []:
            info = json.loads(fail.read_text())
            notes.append(
                f"failed run skipped: job {info.get('job')} ({' '.join(info.get('overrides', []))})"
            )
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


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are left out and stay NaN)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_tests(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(t-test p, Wilcoxon p, n users) of a vs b over the users both have."""
    from scipy import stats

    users = sorted(set(a) & set(b))
    if len(users) < 2:
        return math.nan, math.nan, len(users)
    x = np.array([a[u] for u in users])
    y = np.array([b[u] for u in users])
    d = x - y
    if np.allclose(d, 0):
        return 1.0, 1.0, len(users)
    if np.allclose(d, d[0]):  # constant non-zero difference: t undefined, the sign is certain
        p_t = 0.0
    else:
        p_t = float(stats.ttest_rel(x, y).pvalue)
    p_w = float(stats.wilcoxon(x, y, zero_method="wilcox").pvalue)
    return p_t, p_w, len(users)


def _split_metric(name: str) -> tuple[str, str]:
    split, sep, metric = name.partition("/")
    return (split, metric) if sep else ("test", name)


def compare(
    paths: list[str],
    metrics: list[str],
    primary: str | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """The comparison as a dict: ``rows`` (one per group), ``primary``, ``baseline``, ``notes``."""
    runs, notes = find_runs(paths)
    if not runs:
        raise DataError("no runs to compare")
    check_fingerprints(runs)
    groups = group_runs(runs)
    primary = primary or metrics[0]
    p_split, p_metric = _split_metric(primary)
    if p_split != "test":
        notes.append(
            f"significance tests use per-user test values; {primary} is a {p_split} metric"
        )
    for m in [*metrics, primary]:
        s, k = _split_metric(m)
        if not any(k in r.metrics.get(s, {}) for r in runs):
            raise DataError(f"metric {m!r} is in no run's metrics.json (e.g. test/ndcg@10)")

    base = _pick_baseline(groups, baseline)
    rows = []
    base_users = base.user_means(p_metric) if len(groups) > 1 else {}
    for g in groups:
        row: dict[str, Any] = {
            "label": g.label,
            "n_seeds": len(g.runs),
            "seeds": [r.seed for r in g.runs],
        }
        for m in metrics:
            s, k = _split_metric(m)
            v = g.values(s, k)
            row[m] = (
                (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
                if len(v)
                else (math.nan, math.nan)
            )
        if g is base or not base_users:
            row.update(p_ttest=math.nan, p_wilcoxon=math.nan, n_users=len(base_users))
        else:
            p_t, p_w, n = paired_tests(g.user_means(p_metric), base_users)
            row.update(p_ttest=p_t, p_wilcoxon=p_w, n_users=n)
        row["baseline"] = g is base
        rows.append(row)
    for key in ("p_ttest", "p_wilcoxon"):
        for row, adj in zip(rows, holm([r[key] for r in rows]), strict=False):
            row[f"{key}_holm"] = adj
    for row, g in zip(rows, groups, strict=False):
        v = g.values(p_split, p_metric)
        row["primary_mean"] = float(v.mean()) if len(v) else math.nan
        row["primary_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    best = int(np.nanargmax([r["primary_mean"] for r in rows]))
    for i, row in enumerate(rows):
        row["best"] = i == best
    return {
        "rows": rows,
        "metrics": metrics,
        "primary": primary,
        "baseline": base.label,
        "notes": notes,
        "by_group": compare_groups(groups, base, p_metric) if len(groups) > 1 else {},
    }


def _group_labels(g: Group) -> dict[str, dict[int, str]]:
    """``{slicing: {user: group}}`` stored by training (``group:<slicing>`` in per_user_test.npz)."""
    pu = g.runs[0].per_user()
    return {
        k.removeprefix("group:"): dict(zip(pu["user"].tolist(), pu[k].tolist(), strict=False))
        for k in pu
        if k.startswith("group:")
    }


def compare_groups(
    groups: list[Group], base: Group, metric: str, alpha: float = 0.05
) -> dict[str, Any]:
    """Per user group (activity bucket, segment, attribute: the runs' ``eval.groups``), each row's
    mean per-user ``metric`` and a paired t-test against the baseline within the group, Holm-
    adjusted across the cells of a slicing; ``worse`` lists the groups where the row is
    significantly (adjusted p < ``alpha``) below the baseline."""
    labels = _group_labels(base)
    base_users = base.user_means(metric)
    out: dict[str, Any] = {}
    for slicing, of_user in labels.items():
        order = ("cold", "light", "heavy")  # activity buckets in their natural order
        names = sorted(
            {v for v in of_user.values() if v},
            key=lambda v: (order.index(v) if v in order else 3, v),
        )
        rows, cells = [], []
        for g in groups:
            users = g.user_means(metric)
            row: dict[str, Any] = {
                "label": g.label,
                "baseline": g is base,
                "mean": {},
                "p_holm": {},
                "worse": [],
            }
            for name in names:
                members = {u: v for u, v in users.items() if of_user.get(u) == name}
                row["mean"][name] = float(np.mean(list(members.values()))) if members else math.nan
                if g is not base:
                    ref = {u: v for u, v in base_users.items() if of_user.get(u) == name}
                    cells.append((row, name, paired_tests(members, ref)[0]))
            rows.append(row)
        for (row, name, _), adj in zip(cells, holm([c[2] for c in cells]), strict=False):
            row["p_holm"][name] = adj
            base_mean = next(r for r in rows if r["baseline"])["mean"][name]
            if adj < alpha and row["mean"][name] < base_mean:
                row["worse"].append(name)
        sizes = {name: sum(1 for v in of_user.values() if v == name) for name in names}
        out[slicing] = {"groups": names, "sizes": sizes, "metric": metric, "rows": rows}
    return out


def groups_markdown(by_group: dict[str, Any], baseline: str) -> list[str]:
    lines: list[str] = []
    for slicing, t in by_group.items():
        lines += ["", f"Per {slicing} group: test {t['metric']} (users)"]
        head = ["run", *[f"{n} ({t['sizes'][n]})" for n in t["groups"]]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in t["rows"]:
            cells = [r["label"] + (" (baseline)" if r["baseline"] else "")]
            for n in t["groups"]:
                mark = " ▼" if n in r["worse"] else ""
                cells.append(f"{r['mean'][n]:.4f}{mark}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"▼ significantly below {baseline!r} in that group (paired t-test, Holm-adjusted p < 0.05)."
        )
    return lines


def _pick_baseline(groups: list[Group], name: str | None) -> Group:
    if name:
        exact = [g for g in groups if g.label == name] or [
            g for g in groups if g.label.split()[0] == name
        ]
        hits = exact or [g for g in groups if name.lower() in g.label.lower()]
        if len(hits) != 1:
            labels = ", ".join(repr(g.label) for g in groups)
            what = "matches no row" if not hits else "matches several rows"
            raise RecsysError(f"--baseline {name!r} {what}; rows: {labels}")
        return hits[0]
    pop = [g for g in groups if g.label.startswith("popularity")]
    return pop[0] if pop else groups[0]


def _fmt_p(p: float) -> str:
    return "" if math.isnan(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def to_markdown(result: dict[str, Any]) -> str:
    metrics, primary = result["metrics"], result["primary"]
    head = ["", "run", "seeds", *metrics, "p t-test (Holm)", "p Wilcoxon (Holm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [
            "★" if r["best"] else "",
            r["label"] + (" (baseline)" if r["baseline"] else ""),
            str(r["n_seeds"]),
        ]
        for m in metrics:
            mean, std = r[m]
            cells.append(f"{mean:.4f} ± {std:.4f}")
        cells += [_fmt_p(r["p_ttest_holm"]), _fmt_p(r["p_wilcoxon_holm"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"★ best mean {primary}. Mean ± std over seeds. Paired tests on per-user test "
        f"{_split_metric(primary)[1]} against {result['baseline']!r}, Holm-adjusted across rows."
    )
    lines += groups_markdown(result.get("by_group") or {}, result["baseline"])
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write_csv(result: dict[str, Any], path: Path) -> None:
    fields = ["label", "n_seeds", "seeds", "best", "baseline"]
    for m in result["metrics"]:
        fields += [f"{m} mean", f"{m} std"]
    fields += ["n_users", "p_ttest", "p_wilcoxon", "p_ttest_holm", "p_wilcoxon_holm"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in result["rows"]:
            row = [
                r["label"],
                r["n_seeds"],
                " ".join(map(str, r["seeds"])),
                r["best"],
                r["baseline"],
            ]
            for m in result["metrics"]:
                row += [f"{r[m][0]:.6f}", f"{r[m][1]:.6f}"]
            row += [r["n_users"]] + [
                ("" if math.isnan(r[k]) else f"{r[k]:.6g}") for k in fields[-4:]
            ]
            w.writerow(row)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 4))
    colors = [
        "tab:orange" if r["best"] else ("tab:gray" if r["baseline"] else "tab:blue") for r in rows
    ]
    x = np.arange(len(rows))
    ax.bar(
        x,
        [r["primary_mean"] for r in rows],
        yerr=[r["primary_std"] for r in rows],
        capsize=4,
        color=colors,
    )
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(result["primary"])
    ax.set_title(f"{result['primary']} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
