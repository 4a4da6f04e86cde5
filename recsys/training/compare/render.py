"""The comparison as a markdown table, a CSV and a bar chart (``compare.md/.csv/.png``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from recsys.training.compare.stats import split_metric


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
        f"{split_metric(primary)[1]} against {result['baseline']!r}, Holm-adjusted across rows."
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


def write_report(result: dict[str, Any], out: Path) -> tuple[str, list[Path]]:
    """``compare.md``, ``compare.csv`` and ``compare.png`` of ``result`` in ``out`` (created);
    returns the markdown and the three paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(result)
    paths = [out / "compare.md", out / "compare.csv", out / "compare.png"]
    paths[0].write_text(md)
    write_csv(result, paths[1])
    plot(result, paths[2])
    return md, paths
