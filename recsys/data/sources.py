"""Raw formats → a frame of external ids (``user, item`` + optional ``time, rating``).

Each source is a function ``(data config) -> DataFrame`` named by ``data.source``. Files are found
under ``<data.root>/<data.folder>/`` (``data.root`` defaults to ``$RECSYS_DATA_DIR``, else
``data/``) and downloaded from ``data.remote`` when missing (see :mod:`recsys.data.download`).

Parsing is vectorized: delimited files go through pyarrow's multi-threaded CSV reader; only when
that fails or a column has the wrong type is the file re-read (by pandas, as text) to find the
first bad line and report it as a one-line :class:`~recsys.errors.DataError` naming the file, the
line and the column. Nothing here loops over rows in Python.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError

ROLES = ("user", "item", "time", "rating")
_SEP_PLACEHOLDER = "\x1f"  # multi-character separators (ml-1m's "::") are rewritten to this


# Notices about the data itself (not about the cache), kept so a cached split can repeat them.
NOTICES: list[str] = []


def notice(message: str, about_data: bool = False) -> None:
    """A one-line notice for the user (stderr, so stdout stays parseable)."""
    if about_data:
        NOTICES.append(message)
    print(message, file=sys.stderr, flush=True)


# -- where files live -----------------------------------------------------------------------------
def data_root(cfg: Mapping[str, Any]) -> Path:
    """``data.root``, else ``$RECSYS_DATA_DIR``, else ``data/`` (relative to the working dir)."""
    root = cfg.get("root") or os.environ.get("RECSYS_DATA_DIR") or "data"
    return Path(str(root)).expanduser()


def _folder(cfg: Mapping[str, Any]) -> Path:
    return data_root(cfg) / str(cfg.get("folder") or cfg.get("name", ""))


def _present(folder: Path, names: list[str]) -> list[str]:
    return [f for f in names if (folder / f).is_file()]


def dataset_dir(cfg: Mapping[str, Any]) -> Path:
    """``<root>/<folder>`` holding ``data.files`` (or ``data.alternative_files``).

    Missing files are downloaded when ``data.download`` is true and the config names a
    ``data.remote`` archive; otherwise (or offline) a :class:`DataError` names the URL, the
    expected files and the directory to put them in.
    """
    folder = _folder(cfg)
    files = [str(f) for f in cfg.get("files") or []]
    alternatives = [str(f) for f in cfg.get("alternative_files") or []]
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing or _present(folder, alternatives):
        return folder
    remote = cfg.get("remote") or {}
    if cfg.get("download", True) and remote.get("url"):
        from recsys.data.download import fetch_dataset

        fetch_dataset(remote, folder, files)
        return folder
    where = f"download {remote['url']} and " if remote.get("url") else ""
    why = " (data.download=false)" if remote.get("url") else ""
    raise DataError(
        f"dataset {cfg.get('name')!r}: missing {', '.join(missing)} in {folder}{why}; "
        f"{where}put {', '.join(files)} in {folder}/ (or set data.root / RECSYS_DATA_DIR to the "
        f"folder that holds {folder.name}/)"
    )


def raw_files(cfg: Mapping[str, Any]) -> list[Path]:
    """The files a source reads (for the cache key): ``data.path`` for ``csv``, else the present
    ``data.files`` (or, failing those, ``data.alternative_files``) under the dataset folder."""
    if cfg.get("path"):
        path = _csv_path(cfg)
        if not path.is_file():
            raise DataError(f"{path}: no such file (data.path)")
        return [path]
    if not cfg.get("files"):
        return []
    folder = dataset_dir(cfg)
    files = _present(folder, [str(f) for f in cfg.get("files") or []])
    files = files or _present(folder, [str(f) for f in cfg.get("alternative_files") or []])
    return [folder / f for f in files]


# -- the delimited-file reader every tabular source shares ----------------------------------------
def read_delimited(
    path: Path,
    *,
    sep: str,
    columns: Mapping[str, str | None],
    header: bool = True,
    names: list[str] | None = None,
    int_ids: bool = True,
    id_as_string: bool = False,
) -> pd.DataFrame:
    """Read the mapped columns of a delimited text file into a frame with the roles as columns.

    Args:
        path: the file.
        sep: field separator (one or more characters).
        columns: role (``user, item, time, rating``) → column name in the header (or in
            ``names``); a role mapped to None is not read.
        header: whether the first line names the columns.
        names: column names when there is no header.
        int_ids: user and item ids must be non-negative integers.
        id_as_string: read user and item ids as strings (tokens).

    Raises:
        DataError: missing file or column, a line with the wrong number of fields, a missing or
            non-numeric value, a negative or non-integer id. The message names file and line.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    wanted = {role: c for role, c in columns.items() if c is not None}
    data: Any = path
    if len(sep) > 1:
        data = io.BytesIO(path.read_bytes().replace(sep.encode(), _SEP_PLACEHOLDER.encode()))
        sep = _SEP_PLACEHOLDER
    if header:
        names = _header(path, sep if len(sep) == 1 else _SEP_PLACEHOLDER, data)
    assert names is not None
    for role, col in wanted.items():
        if col not in names:
            raise DataError(
                f"{path}: missing column {col!r} ({role}); the file has: {', '.join(names)}"
            )
    types = {wanted[r]: pa.string() for r in ("user", "item") if id_as_string and r in wanted}
    try:
        table = pacsv.read_csv(
            data,
            read_options=pacsv.ReadOptions(
                column_names=None if header else names, block_size=1 << 24
            ),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(dict.fromkeys(wanted.values())), column_types=types
            ),
        )
        frame = _typed_frame(table, wanted, int_ids, id_as_string)
    except (pa.ArrowInvalid, _NeedsDiagnosis) as e:
        if isinstance(data, io.BytesIO):
            data.seek(0)
        _diagnose(path, data, sep, header, names, wanted, int_ids, id_as_string)
        raise DataError(f"{path}: could not be parsed ({str(e).splitlines()[0][:200]})") from None
    return frame


class _NeedsDiagnosis(Exception):
    """The fast reader produced a column of the wrong type: find the offending line."""


def _header(path: Path, sep: str, data: Any) -> list[str]:
    if isinstance(data, io.BytesIO):
        first = data.getvalue().split(b"\n", 1)[0].decode("utf-8", "replace")
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    first = first.rstrip("\r\n").lstrip("\ufeff")
    if not first.strip():
        raise DataError(f"{path}: line 1: empty header (expected column names)")
    return [c.strip().strip('"') for c in first.split(sep)]


def _typed_frame(table: Any, wanted: Mapping[str, str], int_ids: bool, id_as_string: bool):
    """Check the parsed columns' types and return them as a frame named by role (no copy into
    a consolidated block: ``split_blocks``)."""
    import pyarrow as pa
    import pyarrow.types as pat

    arrays, names = [], []
    for role, col in wanted.items():
        arr = table.column(col)
        if arr.null_count:
            raise _NeedsDiagnosis(f"empty values in {col}")
        t = arr.type
        if role in ("user", "item"):
            if int_ids and not pat.is_integer(t):
                raise _NeedsDiagnosis(f"{col} is {t}")
            if int_ids and pc_min(arr) < 0:
                raise _NeedsDiagnosis(f"negative id in {col}")
            if pat.is_integer(t) and not id_as_string:
                arr = arr.cast(pa.int64())
        else:
            if not (pat.is_integer(t) or pat.is_floating(t)):
                raise _NeedsDiagnosis(f"{col} is {t}")
            arr = arr.cast(pa.float64())
        arrays.append(arr)
        names.append(role)
    frame = pa.table(arrays, names=names).to_pandas(split_blocks=True, self_destruct=True)
    for role in ("user", "item"):
        if role in frame and frame[role].dtype.kind not in "iu":
            frame[role] = frame[role].astype(str).to_numpy(dtype=object)
    return frame


def pc_min(arr: Any) -> int:
    import pyarrow.compute as pc

    m = pc.min(arr).as_py()
    return 0 if m is None else int(m)


def _diagnose(
    path: Path,
    data: Any,
    sep: str,
    header: bool,
    names: list[str],
    wanted: Mapping[str, str],
    int_ids: bool,
    id_as_string: bool,
) -> None:
    """Re-read the file as text (slow path, only after a failure) and raise a DataError naming
    the first bad line; returns without raising if it finds nothing."""
    try:
        raw = pd.read_csv(
            data,
            sep=sep,
            header=0 if header else None,
            names=None if header else names,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            engine="c" if len(sep) == 1 else "python",
        )
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(
                f"{path}: line {m.group(2)}: expected {m.group(1)} fields, found {m.group(3)}"
            ) from None
        raise DataError(f"{path}: unparseable ({str(e).splitlines()[-1][:200]})") from None
    if header:
        raw.columns = [str(c).strip() for c in raw.columns]
    offset = 2 if header else 1  # row 0 is on line 1, or line 2 below a header
    values = raw.to_numpy(dtype=object) if len(raw.columns) else np.empty((0, 0), dtype=object)
    blank = (values == "").all(axis=1) if values.size else np.zeros(len(raw), bool)
    for role, col in wanted.items():
        s = raw[col].to_numpy(dtype=object)
        empty = (s == "") & ~blank
        if empty.any():
            i = int(np.argmax(empty))
            raise DataError(f"{path}: line {i + offset}: missing value in column {col!r} ({role})")
        if role in ("user", "item") and (id_as_string or not int_ids):
            continue
        num = pd.to_numeric(pd.Series(s), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) & ~blank
        what = "a number"
        if role in ("user", "item"):
            bad |= ~blank & ((num < 0) | (np.floor(num) != num))
            what = "a non-negative integer id"
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{path}: line {i + offset}: column {col!r} ({role}) must be {what}, got {s[i]!r}"
            )


def rows_in_time_order(df: pd.DataFrame, cfg: Mapping[str, Any], path: Path | str) -> pd.DataFrame:
    """``data.rows_in_time_order=true`` declares a log without a time column whose rows are
    written in event order across users: the row number (0, 1, ...) becomes ``time``, a clock of
    event indices shared by all users (not seconds). Refused when the log has a time column."""
    if not cfg.get("rows_in_time_order"):
        return df
    if "time" in df:
        raise DataError(
            f"{path}: data.rows_in_time_order=true, but the log has a time column, which orders "
            "the events; unmap the time column or drop data.rows_in_time_order"
        )
    notice(
        f"{path}: no time column; the row order is the clock (data.rows_in_time_order=true): "
        "time = row number, an event index shared by all users",
        True,
    )
    return df.assign(time=np.arange(len(df), dtype=np.float64))


def _finish(df: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Refuse logs a recommender cannot use: empty, or a single user or a single item."""
    if len(df) == 0:
        raise DataError(f"{path}: no interactions in the file")
    for role in ("user", "item"):
        col = df[role].to_numpy()
        if not (col != col[0]).any():
            raise DataError(
                f"{path}: the {role} column holds a single value ({col[0]}); "
                f"a recommendation log needs at least two distinct {role}s"
            )
    return df.reset_index(drop=True)


# -- the catalog's parsers -------------------------------------------------------------------------
def load_ml100k(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    path = dataset_dir(cfg) / "u.data"
    names = ["user_id", "item_id", "rating", "timestamp"]
    cols = dict(zip(("user", "item", "rating", "time"), names, strict=True))
    return _finish(read_delimited(path, sep="\t", header=False, names=names, columns=cols), path)


def load_ml1m(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-1M: official ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), or, when
    only ``ratings.parquet`` (string ``userID, movieID``) is present, implicit pairs without
    ratings or times. On the pairs, time-based splits and rating thresholds are refused."""
    folder = dataset_dir(cfg)
    dat = folder / "ratings.dat"
    if dat.is_file():
        names = ["UserID", "MovieID", "Rating", "Timestamp"]
        cols = dict(zip(("user", "item", "rating", "time"), names, strict=True))
        return _finish(read_delimited(dat, sep="::", header=False, names=names, columns=cols), dat)
    path = folder / "ratings.parquet"
    split = str(cfg.get("split", "random"))
    needs = []
    if split in ("leave_one_out", "temporal"):
        needs.append(f"data.split={split} needs timestamps")
    if cfg.get("rating_threshold") is not None:
        needs.append(f"data.rating_threshold={cfg.get('rating_threshold')} needs ratings")
    if needs:
        raise DataError(
            f"ml-1m: only {path} is present, which holds (user, movie) pairs without ratings or "
            f"timestamps; {' and '.join(needs)}: use data.split=random and "
            f"data.rating_threshold=null, or put the official ratings.dat in {folder}/"
        )
    notice(f"ml-1m: using {path}: implicit (user, movie) pairs, no ratings or timestamps", True)
    frame = read_parquet(path, {"user": "userID", "item": "movieID"}, int_ids=True)
    return _finish(frame, path)


def load_movielens_csv(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens ``ratings.csv`` (ml-20m, ml-25m, ml-latest, ml-latest-small): header
    ``userId,movieId,rating,timestamp``."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    cols = {"user": "userId", "item": "movieId", "rating": "rating", "time": "timestamp"}
    return _finish(read_delimited(path, sep=",", header=True, columns=cols), path)


def load_lastfm(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Last.fm hetrec2011 ``user_artists.dat``: tab-separated ``userID artistID weight`` with a
    header; the play count becomes ``rating``; there are no timestamps."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    cols = {"user": "userID", "item": "artistID", "rating": "weight"}
    return _finish(read_delimited(path, sep="\t", header=True, columns=cols), path)


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
    return _finish(parse_user_sequences(path.read_bytes(), path), path)


def parse_user_sequences(raw: bytes, path: Path | str) -> pd.DataFrame:
    """Parse the one-line-per-user format from bytes (vectorized over tokens)."""
    text = raw.decode("utf-8", "replace")
    lengths = np.fromiter(map(len, map(str.split, text.splitlines())), dtype=np.int64)
    tokens = text.split()
    if not tokens:
        return pd.DataFrame({"user": [], "item": [], "time": []})
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
    try:
        ids = np.array(tokens, dtype=np.int64)
        bad_any = bool(len(ids)) and ids.min() < 0
    except (ValueError, OverflowError):
        bad_any = True
    if bad_any:
        num = pd.to_numeric(pd.Series(tokens, dtype=object), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) | (num < 0) | (np.floor(num) != num)
        i = int(np.argmax(bad))
        line_of = np.repeat(np.arange(len(lengths)), lengths)
        pos = i - starts[np.searchsorted(starts, i, side="right") - 1]
        raise DataError(
            f"{path}: line {line_of[i] + 1}: {'user' if pos == 0 else 'item'} id at field "
            f"{pos + 1} must be a non-negative integer, got {tokens[i]!r}"
        )
    is_user = np.zeros(len(ids), dtype=bool)
    is_user[starts] = True
    counts = lengths[lengths > 0]
    user = np.repeat(ids[starts], counts)[~is_user]
    pos = np.arange(len(ids)) - np.repeat(starts, counts)
    return pd.DataFrame({"user": user, "item": ids[~is_user], "time": pos[~is_user] - 1.0})


def read_parquet(
    path: Path, columns: Mapping[str, str | None], int_ids: bool = False
) -> pd.DataFrame:
    """The mapped columns of a Parquet file, checked like :func:`read_delimited` (rows are
    reported 1-based)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # not a parquet file, truncated footer
        raise DataError(
            f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})"
        ) from None
    wanted = {r: c for r, c in columns.items() if c is not None}
    for role, col in wanted.items():
        if col not in schema.names:
            raise DataError(
                f"{path}: missing column {col!r} ({role}); the file has: {', '.join(schema.names)}"
            )
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    out = {}
    import pyarrow as pa

    for role, col in wanted.items():
        arr = table.column(col)
        if arr.null_count == 0 and (int_ids or role in ("time", "rating")):
            try:  # fast path: a vectorized cast; on failure, locate the bad row below
                target = pa.int64() if role in ("user", "item") else pa.float64()
                cast = arr.cast(target).to_numpy()
                if role not in ("user", "item") or len(cast) == 0 or cast.min() >= 0:
                    out[role] = cast
                    continue
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        s = arr.to_pandas()
        if s.isna().any():
            i = int(np.argmax(s.isna().to_numpy()))
            raise DataError(f"{path}: row {i + 1}: missing value in column {col!r} ({role})")
        if role in ("user", "item") and not int_ids:
            out[role] = s.to_numpy() if s.dtype.kind in "iu" else s.astype(str).to_numpy()
            continue
        num = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num)
        what = "a number"
        if role in ("user", "item"):
            bad |= (num < 0) | (np.floor(num) != num)
            what = "a non-negative integer id"
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{path}: row {i + 1}: column {col!r} ({role}) must be {what}, got {s.iloc[i]!r}"
            )
        out[role] = num.astype(np.int64) if role in ("user", "item") else num
    return pd.DataFrame(out)


# -- RecBole atomic files and user logs ------------------------------------------------------------
_ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


def load_atomic(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """RecBole atomic ``<name>.inter``: tab-separated with a typed header such as
    ``user_id:token item_id:token rating:float timestamp:float``. ``data.fields`` maps roles to
    field names; ``rating`` and ``time`` are used when the header has them."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    sep = str(cfg.get("sep") or "\t")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.strip() for h in f.readline().rstrip("\r\n").lstrip("\ufeff").split(sep)]
    typed = {}
    for h in header:
        name, colon, kind = h.partition(":")
        if not colon or kind not in _ATOMIC_TYPES:
            raise DataError(
                f"{path}: line 1: header field {h!r} is not '<name>:<type>' with type one of "
                f"{', '.join(_ATOMIC_TYPES)}"
            )
        typed[name] = (h, kind)
    fields = dict(cfg.get("fields") or {})
    cols: dict[str, str | None] = {}
    for role in ROLES:
        name = fields.get(role)
        if name is None:
            continue
        if name not in typed:
            if role in ("user", "item"):
                raise DataError(
                    f"{path}: missing field {name!r} ({role}, data.fields.{role}); the header "
                    f"has: {', '.join(header)}"
                )
            continue
        full, kind = typed[name]
        if role in ("time", "rating") and kind != "float":
            raise DataError(f"{path}: field {full!r} ({role}) must have type float")
        cols[role] = full
    frame = read_delimited(
        path, sep=sep, header=True, columns=cols, int_ids=False, id_as_string=True
    )
    return _finish(rows_in_time_order(frame, cfg, path), path)


def _csv_path(cfg: Mapping[str, Any]) -> Path:
    p = Path(str(cfg.get("path"))).expanduser()
    return p if p.is_absolute() else data_root(cfg) / p


def load_csv(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """A user's own log: CSV, TSV or Parquet (``data.path``, absolute or under the data root),
    with ``data.columns`` mapping ``user, item`` and the optional ``time, rating`` to column names
    (or 0-based positions when ``data.header`` is false)."""
    if not cfg.get("path"):
        raise DataError("data.path: the csv source needs the path of the log file")
    path = _csv_path(cfg)
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path)")
    mapping = dict(cfg.get("columns") or {})
    for role in ("user", "item"):
        if mapping.get(role) is None:
            raise DataError(f"data.columns.{role}: the csv source needs the {role} column")
    unknown = set(mapping) - set(ROLES)
    if unknown:
        raise DataError(f"data.columns: unknown role(s) {', '.join(sorted(unknown))}; use {ROLES}")
    fmt = str(cfg.get("format") or "auto")
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".parquet": "parquet", ".pq": "parquet", ".tsv": "tsv", ".tab": "tsv"}.get(
            suffix, "csv"
        )
    id_type = str(cfg.get("id_type") or "auto")
    if fmt == "parquet":
        frame = read_parquet(path, mapping, int_ids=id_type == "int")
        return _finish(rows_in_time_order(frame, cfg, path), path)
    sep = cfg.get("sep") or ("\t" if fmt == "tsv" else ",")
    header = bool(cfg.get("header", True))
    names = None
    if not header:
        positions = [v for v in mapping.values() if v is not None]
        if not all(isinstance(v, int) for v in positions):
            raise DataError("data.columns: without a header, map roles to 0-based column positions")
        with open(path, encoding="utf-8", errors="replace") as f:
            width = len(f.readline().rstrip("\r\n").split(str(sep)))
        names = [str(i) for i in range(width)]
        for role, v in mapping.items():
            if v is not None and v >= width:
                raise DataError(f"{path}: missing column {v} ({role}); line 1 has {width} fields")
        mapping = {r: (None if v is None else str(v)) for r, v in mapping.items()}
    frame = read_delimited(
        path,
        sep=str(sep),
        header=header,
        names=names,
        columns=mapping,
        int_ids=id_type == "int",
        id_as_string=id_type == "str",
    )
    return _finish(rows_in_time_order(frame, cfg, path), path)
