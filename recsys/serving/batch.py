"""Offline recommendation from a loaded artifact: user lists in, CSV files out.

What ``recsys-recommend`` does beyond parsing its arguments and printing: read a users file,
recommend for many users in batches, look up item titles for "similar items", and write the
results as CSV. Imports neither Hydra nor Lightning.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.serving.artifact import LoadedRecommender


def read_users(path: Path) -> list[str]:
    """External user ids from a CSV with a ``user`` column, or one id per line without header."""
    if not path.is_file():
        raise RecsysError(f"--input: no such file: {path}")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise RecsysError(f"--input: {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "user" in header:
        col = header.index("user")
        return [r[col].strip() for r in rows[1:] if len(r) > col]
    if len(header) > 1:
        raise RecsysError(f"--input: {path} has several columns and none is named 'user'")
    return [r[0].strip() for r in rows]


def parse_ids(text: str, option: str, what: str = "item id") -> list[str]:
    """Comma-separated ids (blanks dropped); at least one, else a one-line error."""
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise RecsysError(f"{option}: give at least one {what}")
    return ids


def recommend_users(
    rec: LoadedRecommender,
    users: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    fallback: str | None = None,
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """``rec.recommend`` over ``users`` in batches of ``batch_size``: one dict per user."""
    out: list[dict[str, Any]] = []
    step = max(1, batch_size)
    for s in range(0, len(users), step):
        out += rec.recommend(
            list(users[s : s + step]), k=k, exclude_seen=exclude_seen, fallback=fallback
        )
    return out


def write_recommendations(rows: list[dict[str, Any]], path: Path) -> int:
    """One CSV row per recommendation (``user,rank,item,score``); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "rank", "item", "score"])
        for r in rows:
            for rank, (item, score) in enumerate(zip(r["items"], r["scores"], strict=False), 1):
                w.writerow([r["user"], rank, item, f"{score:.7g}"])
                n += 1
    return n


def similar_with_titles(
    rec: LoadedRecommender,
    items: Sequence[str],
    k: int,
    method: str = "auto",
    data_root: str | None = None,
) -> list[dict[str, Any]]:
    """``rec.similar_items`` of each of ``items``, with the titles of the query item
    (``title``) and of the similar ones (``titles``; "" where the metadata has none)."""
    titles = rec.item_titles(data_root)
    out = rec.similar_items(list(items), k=k, method=method)
    return [
        {
            **r,
            "title": titles.get(str(r["item"]), ""),
            "titles": [titles.get(str(i), "") for i in r["items"]],
        }
        for r in out
    ]


def write_similar(rows: list[dict[str, Any]], path: Path) -> None:
    """One CSV row per similar item: ``item,rank,similar_item,score,title``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "rank", "similar_item", "score", "title"])
        for r in rows:
            cells = zip(r["items"], r["scores"], r["titles"], strict=False)
            for rank, (item, score, title) in enumerate(cells, 1):
                w.writerow([r["item"], rank, item, f"{score:.7g}", title])
