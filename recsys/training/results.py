"""Run outputs: the results table printed at the end of a run."""

from __future__ import annotations


def _metric_order(name: str) -> tuple[int, str]:
    metric, _, k = name.partition("@")
    return (int(k) if k.isdigit() else 0, metric)


def _cell(name: str, value: float) -> str:
    """Counts (``n_users``, ``n_...``) print as integers, metrics with four decimals."""
    return str(int(value)) if name.startswith("n_") else f"{value:.4f}"


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per label, one column per metric (sorted by K, then name)."""
    cols = sorted({c for r in rows.values() for c in r}, key=_metric_order)
    label_w = max([len("split")] + [len(r) for r in rows])
    widths = [max(len(c), 6) for c in cols]
    lines = [
        "  ".join(
            ["split".ljust(label_w)] + [c.rjust(w) for c, w in zip(cols, widths, strict=True)]
        ),
    ]
    lines.append("-" * len(lines[0]))
    for label, r in rows.items():
        cells = [
            (_cell(c, r[c]) if c in r else "").rjust(w) for c, w in zip(cols, widths, strict=True)
        ]
        lines.append("  ".join([label.ljust(label_w)] + cells))
    return "\n".join(lines)
