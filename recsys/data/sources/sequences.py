"""One line per user, ``user item item ...`` in time order: the S3-Rec / ICLRec files of
Amazon Beauty, Sports, Toys and Yelp."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.sources.files import dataset_dir, finish_log
from recsys.errors import DataError


def load_user_sequences(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """One line per user, ``user item item ...`` in time order (S3-Rec / ICLRec format). The
    position in the line becomes the ``time`` column (0, 1, 2, ... per user): an order within
    each user, not a clock shared by all users."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    if cfg.get("rows_in_time_order"):
        raise DataError(
            f"{path}: data.rows_in_time_order=true does not apply: each line is one user's "
            "whole sequence, so the lines are not events in time order across users"
        )
    return finish_log(parse_user_sequences(path.read_bytes(), path), path)


def _line_of(raw: bytes, offset: int) -> int:
    """1-based line number of byte ``offset`` (lines end at ``\\n``, ``\\r\\n`` or ``\\r``)."""
    return len(raw[:offset].splitlines()) + (offset == 0 or raw[offset - 1 : offset] in b"\r\n")


def parse_user_sequences(raw: bytes, path: Path | str) -> pd.DataFrame:
    """Parse the one-line-per-user format from bytes (vectorized over tokens).

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; fields are separated by ASCII whitespace. Every
    token must be a non-negative integer written exactly (plain digits, no sign or leading zero,
    below 2**63; :func:`~recsys.data.sources.files.is_int_id`). The file must be UTF-8 without
    NUL characters: anything else is a one-line DataError naming the line.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{path}: line {_line_of(raw, nul)}: a NUL character (is it a binary file?)"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: line {_line_of(raw, e.start)}: not valid UTF-8 text (byte "
            f"0x{raw[e.start]:02x}); the file must be UTF-8"
        ) from None
    lines = raw.splitlines()
    lengths = np.fromiter(map(len, map(bytes.split, lines)), dtype=np.int64, count=len(lines))
    tokens = b" ".join(lines).split()  # ASCII whitespace only, as each line was split
    if not tokens:
        return pd.DataFrame({"user": [], "item": [], "time": []})
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
    texts = pa.array(tokens, type=pa.binary()).cast(pa.string())
    canonical = pc.match_substring_regex(texts, r"^(0|[1-9][0-9]{0,18})$")
    too_big = pc.and_(
        pc.equal(pc.binary_length(texts), 19), pc.greater(texts, "9223372036854775807")
    )
    ok = pc.and_(canonical, pc.invert(too_big)).to_numpy(zero_copy_only=False)
    if not ok.all():
        i = int(np.argmin(ok))
        line_of = np.repeat(np.arange(len(lengths)), lengths)
        pos = i - starts[np.searchsorted(starts, i, side="right") - 1]
        raise DataError(
            f"{path}: line {line_of[i] + 1}: {'user' if pos == 0 else 'item'} id at field "
            f"{pos + 1} must be a non-negative integer (plain digits without sign or leading "
            f"zeros, below 2**63), got {tokens[i].decode()[:60]!r}"
        )
    ids = pc.cast(texts, pa.int64()).to_numpy()
    is_user = np.zeros(len(ids), dtype=bool)
    is_user[starts] = True
    counts = lengths[lengths > 0]
    user = np.repeat(ids[starts], counts)[~is_user]
    pos = np.arange(len(ids)) - np.repeat(starts, counts)
    return pd.DataFrame({"user": user, "item": ids[~is_user], "time": pos[~is_user] - 1.0})
