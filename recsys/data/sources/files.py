"""Finding and reading raw files, shared by every loader of :mod:`recsys.data.sources`.

Files are found under ``<data.root>/<data.folder>/`` (``data.root`` defaults to
``$RECSYS_DATA_DIR``, else ``data/``) and downloaded from ``data.remote`` when missing (see
:mod:`recsys.data.download`).

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


def log_path(cfg: Mapping[str, Any]) -> Path:
    """``data.path`` (the ``csv`` source's log), absolute or under the data root."""
    p = Path(str(cfg.get("path"))).expanduser()
    return p if p.is_absolute() else data_root(cfg) / p


def raw_files(cfg: Mapping[str, Any]) -> list[Path]:
    """The files a source reads (for the cache key): ``data.path`` for ``csv``, else the present
    ``data.files`` (or, failing those, ``data.alternative_files``) under the dataset folder."""
    if cfg.get("path"):
        path = log_path(cfg)
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


# -- Parquet, checked the same way -----------------------------------------------------------------
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


# -- what every loader does with the frame it read -------------------------------------------------
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


def finish_log(df: pd.DataFrame, path: Path | str) -> pd.DataFrame:
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
