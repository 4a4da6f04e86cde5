"""Offline recommendation from a loaded artifact: user lists in, CSV files out.

What ``recsys-recommend`` does beyond parsing its arguments and printing: read a users file,
recommend for many users in batches, look up item titles for "similar items", and write the
results as CSV (atomically: a reader never sees half a file, a failed run leaves none). Imports
neither Hydra nor Lightning.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.files import atomic_write
from recsys.serving.artifact import LoadedRecommender


def read_users(path: Path, option: str = "--input") -> list[str]:
    """External user ids from a UTF-8 CSV with a ``user`` column, or one id per line without a
    header; a file that is not such text is refused with one line naming it (and the line)."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise RecsysError(f"{option}: {path}: {what}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecsysError(f"{option}: {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecsysError(
            f"{option}: {path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
            "give a CSV of user ids"
        ) from None
    if "\x00" in text:  # csv reads NUL as a character; in a list of ids it means binary
        line = text[: text.index("\x00")].count("\n") + 1
        raise RecsysError(f"{option}: {path}, line {line}: a NUL byte; give a CSV of user ids")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    except csv.Error as e:  # a NUL byte, an unterminated quote
        raise RecsysError(f"{option}: {path}, line {reader.line_num}: {e}") from None
    if not rows:
        raise RecsysError(f"{option}: {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "user" in header:
        col = header.index("user")
        users = [r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()]
    elif len(header) > 1:
        raise RecsysError(f"{option}: {path} has several columns and none is named 'user'")
    else:
        users = [r[0].strip() for r in rows]
    if not users:
        raise RecsysError(f"{option}: {path} holds a header but no user ids")
    return users


def check_output(path: Path, option: str = "--output") -> None:
    """Refuse, before any work, an output path that cannot become a file."""
    if path.is_dir():
        raise RecsysError(f"{option}: {path} is a folder; give a file name (e.g. {path}/recs.csv)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise RecsysError(f"{option}: {parent} is a file, so {path} cannot be written")


def parse_ids(text: str, option: str, what: str = "item id") -> list[str]:
    """Comma-separated ids (blanks dropped); at least one, else a one-line error."""
    ids = [i.strip() for i in text.split(",") if i.strip()]
    if not ids:
        raise RecsysError(f"{option}: give at least one {what}")
    return ids


def parse_attributes(text: str, option: str) -> dict[str, Any]:
    """A JSON object of attribute → value(s) given on the command line (``option`` names the
    flag in the one-line error of anything else)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RecsysError(f"{option}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise RecsysError(
            f"{option}: give a JSON object of attribute → value(s), e.g. "
            f'\'{{"genre": ["Drama"]}}\', got {type(value).__name__}'
        )
    return value


def new_item_names(count: int) -> list[str]:
    """The ids new products given on the command line get in the output: new1, new2, ..."""
    return [f"new{i + 1}" for i in range(count)]


def similar_new_with_titles(
    rec: LoadedRecommender,
    new_items: Mapping[str, Mapping[str, Any]],
    k: int,
    data_root: str | None = None,
) -> list[dict[str, Any]]:
    """``rec.similar`` of each new product (name → attributes), shaped as
    :func:`similar_with_titles` rows (the query has no title)."""
    titles = rec.item_titles(data_root)
    out = []
    for name, attrs in new_items.items():
        r = rec.similar(attrs, k=k)
        titles_of = [titles.get(str(i), "") for i in r["items"]]
        out.append({"item": name, "title": "", "titles": titles_of, "method": "attributes", **r})
    return out


def write_top_users(rows: list[dict[str, Any]], path: Path, option: str = "--output") -> int:
    """One CSV row per user of a new product's audience: ``item,rank,user,score``."""

    def write(w) -> int:
        n = 0
        for r in rows:
            for rank, (user, score) in enumerate(zip(r["users"], r["scores"], strict=False), 1):
                w.writerow([r["item"], rank, user, f"{score:.7g}"])
                n += 1
        return n

    return _write_csv(path, ["item", "rank", "user", "score"], write, option)


def recommend_users(
    rec: LoadedRecommender,
    users: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    fallback: str | None = None,
    batch_size: int = 1024,
    new_items: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``rec.recommend`` over ``users`` in batches of ``batch_size``: one dict per user
    (``new_items``: new products ranked with the catalogue, as ``rec.recommend``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RecsysError(f"--batch-size must be a positive integer, got {batch_size!r}")
    out: list[dict[str, Any]] = []
    step = batch_size
    for s in range(0, len(users), step):
        out += rec.recommend(
            list(users[s : s + step]),
            k=k,
            exclude_seen=exclude_seen,
            fallback=fallback,
            new_items=new_items,
        )
    return out


def _write_csv(path: Path, header: list[str], rows: Callable[[Any], int], option: str) -> int:
    """Write a CSV atomically (a temporary file beside ``path``, then a rename): ``rows(writer)``
    writes the rows and returns how many. An unwritable path: one line naming it."""
    check_output(path, option)
    count = 0

    def write(f) -> None:
        nonlocal count
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text)
        w.writerow(header)
        count = rows(w)
        text.flush()
        text.detach()

    try:
        atomic_write(path, write)
    except OSError as e:
        raise RecsysError(f"{option}: cannot write {path} ({e.strerror})") from None
    return count


def write_recommendations(rows: list[dict[str, Any]], path: Path, option: str = "--output") -> int:
    """One CSV row per recommendation (``user,rank,item,score``); returns how many."""

    def write(w) -> int:
        n = 0
        for r in rows:
            for rank, (item, score) in enumerate(zip(r["items"], r["scores"], strict=False), 1):
                w.writerow([r["user"], rank, item, f"{score:.7g}"])
                n += 1
        return n

    return _write_csv(path, ["user", "rank", "item", "score"], write, option)


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


def write_similar(rows: list[dict[str, Any]], path: Path, option: str = "--output") -> int:
    """One CSV row per similar item: ``item,rank,similar_item,score,title``; returns how many."""

    def write(w) -> int:
        n = 0
        for r in rows:
            cells = zip(r["items"], r["scores"], r["titles"], strict=False)
            for rank, (item, score, title) in enumerate(cells, 1):
                w.writerow([r["item"], rank, item, f"{score:.7g}", title])
                n += 1
        return n

    return _write_csv(path, ["item", "rank", "similar_item", "score", "title"], write, option)
