"""The comparison: mean ± std over seeds per group of runs, paired tests of per-user values
against the baseline group (t-test, Wilcoxon) with Holm's correction, overall and per user group."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recsys.errors import DataError, RecsysError
from recsys.training.compare.runs import Group, check_fingerprints, find_runs, group_runs


def compare(
    paths: list[str],
    metrics: list[str],
    primary: str | None = None,
    baseline: str | None = None,
    allow_unfinished: bool = False,
) -> dict[str, Any]:
    """The comparison as a dict: ``rows`` (one per group), ``primary``, ``baseline``, ``notes``.
    ``allow_unfinished``: compare runs whose manifest does not say finished (:func:`find_runs`)."""
    runs, notes = find_runs(paths, allow_unfinished)
    if not runs:
        raise DataError("no runs to compare")
    check_fingerprints(runs)
    groups = group_runs(runs)
    primary = primary or metrics[0]
    p_split, p_metric = split_metric(primary)
    if p_split != "test":
        notes.append(
            f"significance tests use per-user test values; {primary} is a {p_split} metric"
        )
    for m in [*metrics, primary]:
        s, k = split_metric(m)
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
            s, k = split_metric(m)
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


def split_metric(name: str) -> tuple[str, str]:
    split, sep, metric = name.partition("/")
    return (split, metric) if sep else ("test", name)


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
