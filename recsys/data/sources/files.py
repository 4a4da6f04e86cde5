"""Finding and reading raw files, shared by every loader of :mod:`recsys.data.sources`.

Files are found under ``<data.root>/<data.folder>/`` (``data.root`` defaults to
``$RECSYS_DATA_DIR``, else ``data/``) and downloaded from ``data.remote`` when missing (see
:mod:`recsys.data.download`).

Parsing is vectorized: delimited files go through pyarrow's multi-threaded CSV reader and the
values are checked with pyarrow compute functions; only when that fails is the file re-read line
by line (Python's csv module, the slow path) to find the first bad line and report it as a
one-line :class:`~recsys.errors.DataError` naming the file, the line and the column. A file that
is not UTF-8, holds NUL characters or is binary fails the same way, never with a traceback.

Ids are never passed through a float: ``id_type="str"`` keeps each id's text exactly as written
(``007`` stays ``007``, 20-digit ids stay distinct), ``id_type="int"`` accepts only plain
non-negative decimal integers below 2**63 (:func:`is_int_id`) and reads them as int64.
"""

from __future__ import annotations

import csv
import io
import math
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


# -- ids: as written, or integers checked exactly ----------------------------------------------
ID_TYPES = ("str", "int")
_INT64_MAX = "9223372036854775807"
_INT_ID = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII digits, no sign, space or leading zero
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SURROGATE = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8 (surrogateescape)
_NOT_FINITE = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan", "+nan", "-nan"}


def is_int_id(text: str) -> bool:
    """Whether ``text`` is a non-negative integer id written exactly: decimal ASCII digits, no
    sign, space or leading zero, at most 2**63 - 1. Such a text and its int64 convert both ways
    without loss; anything else (``3.5``, ``1e3``, ``-1``, `` 12``, ``007``, 20 digits) is not
    an int id."""
    return _INT_ID.fullmatch(text) is not None and (len(text) < 19 or text <= _INT64_MAX)


def _value_problem(role: str, col: str, text: str, id_type: str, hint: str) -> str | None:
    """What is wrong with one field (``None``: nothing), phrased for a one-line DataError."""
    where = f"column {col!r} ({role})"
    if role in ("user", "item"):
        if text == "":
            return f"missing value in {where}"
        if "\x00" in text:
            return f"{where} holds a NUL character (is it a binary file?)"
        if _SURROGATE.search(text):
            return f"{where} is not valid UTF-8 text (save the file as UTF-8)"
        if id_type == "int" and not is_int_id(text):
            return (
                f"{where} must be a non-negative integer id (plain digits without sign, spaces "
                f"or leading zeros, below 2**63){hint}, got {text[:60]!r}"
            )
        return None
    t = text.strip(" \t")
    if t == "":
        return f"missing value in {where}"
    if t.lower() in _NOT_FINITE:
        return f"{where} must be a finite number, got {text[:60]!r}"
    if _NUMBER.fullmatch(t) is None:
        return f"{where} must be a number, got {text[:60]!r}"
    if not math.isfinite(float(t)):
        return f"{where} must be a finite number, got {text[:60]!r}"
    return None


def _check_ids(arr: Any, id_type: str) -> np.ndarray | None:
    """A string column of ids as numpy (``str``: an object array of the texts; ``int``: int64),
    or None when a value breaks the rules of :func:`_value_problem` (vectorized check)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if arr.null_count:
        return None
    if id_type == "int":
        # pyarrow's cast refuses empty text, spaces, signs other than '-', fractions, exponents
        # and values beyond int64, but takes '-1', '-0', '007' and '0x1f': those start with '-'
        # or with a '0' that is not the whole text (benchmarks/data.md, "String ids and exact
        # integer ids": about 0.6 CPU s per 20M ids, a third of a regular expression's cost)
        try:
            values = pc.cast(arr, pa.int64())
        except pa.ArrowInvalid:
            return None
        if len(arr):
            odd = pc.or_(
                pc.starts_with(arr, "-"),
                pc.and_(pc.starts_with(arr, "0"), pc.greater(pc.binary_length(arr), 1)),
            )
            if pc.any(odd).as_py():
                return None
        return values.to_numpy()
    if len(arr) and (
        pc.min(pc.binary_length(arr)).as_py() == 0
        or pc.any(pc.match_substring(arr, "\x00")).as_py()
    ):
        return None
    return _strings(arr)


def _strings(arr: Any) -> np.ndarray:
    """A string column as an object array of ``str`` holding one object per distinct id in each
    chunk (dictionary-encoded chunk by chunk, never concatenated as Arrow strings, whose 32-bit
    offsets stop at 2 GB): 8 bytes per event instead of a string object each."""
    import pyarrow.compute as pc

    parts = []
    for chunk in getattr(arr, "chunks", [arr]):
        encoded = pc.dictionary_encode(chunk)
        distinct = np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)
        parts.append(distinct[encoded.indices.to_numpy()])
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)


def _check_numbers(arr: Any) -> np.ndarray | None:
    """A float64 column as numpy, or None when a value is missing or not finite."""
    if arr.null_count:
        return None
    values = arr.to_numpy()
    return values if np.isfinite(values).all() else None


# -- the delimited-file reader every tabular source shares ----------------------------------------
def read_delimited(
    path: Path,
    *,
    sep: str,
    columns: Mapping[str, str | None],
    header: bool = True,
    names: list[str] | None = None,
    id_type: str = "int",
    hint: str = "",
) -> pd.DataFrame:
    """Read the mapped columns of a delimited text file into a frame with the roles as columns.

    Args:
        path: the file (UTF-8; a BOM at the start is skipped; quoting as in RFC 4180).
        sep: field separator (one or more characters).
        columns: role (``user, item, time, rating``) → column name in the header (or in
            ``names``); a role mapped to None is not read.
        header: whether the first line names the columns.
        names: column names when there is no header (default: ``0, 1, ...`` over the fields
            of the first line).
        id_type: ``str``: user and item ids are the texts exactly as written (an object array
            of ``str``); ``int``: non-negative integers checked exactly (:func:`is_int_id`),
            read as int64. Ids never pass through a float.
        hint: appended to the message about a bad integer id (how to declare them otherwise).

    Time and rating must be finite numbers. Lines that are entirely empty are skipped.

    Raises:
        DataError: missing file or column, text that is not UTF-8 or holds NUL characters in a
            column read, a line with the wrong number of fields, a missing, non-numeric or
            infinite value, an id breaking ``id_type``. One line naming file, line and column.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {ID_TYPES}, got {id_type!r}")
    data: Any = path
    psep = sep
    if len(sep) > 1:
        raw = path.read_bytes()
        if _SEP_PLACEHOLDER.encode() in raw:
            raise DataError(f"{path}: holds the control character \\x1f (is it a binary file?)")
        data = io.BytesIO(raw.replace(sep.encode(), _SEP_PLACEHOLDER.encode()))
        del raw
        psep = _SEP_PLACEHOLDER
    first = _first_record(path, data, psep, header)
    if isinstance(data, io.BytesIO):
        data.seek(0)
    if header:
        names = [c.strip() for c in first]
    elif names is None:
        names = [str(i) for i in range(len(first))]
    index: dict[str, int] = {}
    for role, col in columns.items():
        if col is None:
            continue
        found = [i for i, n in enumerate(names) if n == col]
        if not found:
            what = "the file has" if header else "line 1 has the fields"
            raise DataError(
                f"{path}: missing column {col!r} ({role}); {what}: {', '.join(names)}"[:400]
            )
        if len(found) > 1:
            raise DataError(f"{path}: line 1: column {col!r} ({role}) is named {len(found)} times")
        index[role] = found[0]
    cols = {role: str(i) for role, i in index.items()}
    types = {c: pa.string() if r in ("user", "item") else pa.float64() for r, c in cols.items()}
    try:
        table = pacsv.read_csv(
            data,
            read_options=pacsv.ReadOptions(
                column_names=[str(i) for i in range(len(names))],
                skip_rows=1 if header else 0,
                block_size=1 << 24,
            ),
            parse_options=pacsv.ParseOptions(delimiter=psep, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(dict.fromkeys(cols.values())),
                column_types=types,
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        out = {}
        for role, c in cols.items():
            arr = table.column(c)
            values = _check_ids(arr, id_type) if role in ("user", "item") else _check_numbers(arr)
            if values is None:
                raise _NeedsDiagnosis(f"a bad value in column {names[int(c)]!r} ({role})")
            out[role] = values
        del table
    except (pa.ArrowInvalid, _NeedsDiagnosis) as e:
        _diagnose(path, data, psep, header, names, index, id_type, hint)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"{path}: could not be parsed ({reason})") from None
    return _frame(out)


def _frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The roles as a frame, without a copy. String ids stay an object array of ``str``: pandas 3
    would otherwise convert them to its pyarrow-backed ``str`` dtype, and every ``to_numpy()``
    downstream would convert them back (benchmarks/data.md, "String ids and exact integer ids":
    40 instead of 28 CPU s, 3.8 instead of 2.1 GB at the peak on 20M events)."""
    return pd.DataFrame(
        {role: pd.Series(v, dtype=v.dtype, copy=False) for role, v in columns.items()},
        copy=False,
    )


class _NeedsDiagnosis(Exception):
    """The fast reader found a value breaking the rules: find the offending line."""


def _open_text(path: Path, data: Any) -> Any:
    """The file as text for Python's csv module: UTF-8 with a leading BOM dropped, lines ending at
    ``\n``, ``\r\n`` or a lone ``\r`` (as pyarrow splits them), bytes that are not UTF-8 kept as
    lone surrogates (``surrogateescape``: a reader reports them where a column read holds them)."""
    raw = data if isinstance(data, io.BytesIO) else open(path, "rb")  # noqa: SIM115
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _close_text(text: Any, data: Any) -> None:
    if isinstance(data, io.BytesIO):
        text.detach()  # the caller's buffer stays open
    else:
        text.close()


def _first_record(path: Path, data: Any, sep: str, header: bool) -> list[str]:
    """The fields of the first line (the header, or the first row of a file without one)."""
    text = _open_text(path, data)
    try:
        line = text.readline()
    finally:
        _close_text(text, data)
    if line.strip("\r\n") == "":
        what = "the header (column names)" if header else "the first row"
        raise DataError(f"{path}: line 1 is empty (expected {what})")
    if header and _SURROGATE.search(line):
        raise DataError(f"{path}: line 1 (the header) is not valid UTF-8 text (save it as UTF-8)")
    if header and "\x00" in line:
        raise DataError(f"{path}: line 1 holds a NUL character (is it a binary file?)")
    try:
        fields = next(csv.reader([line], delimiter=sep, strict=True))
    except (csv.Error, StopIteration):
        raise DataError(
            f"{path}: line 1: an unclosed quote (a header or first row must fit on one line)"
        ) from None
    return fields


def _records(path: Path, data: Any, sep: str, header: bool):
    """``(first line, fields)`` of each record after the header, empty lines skipped: the file
    as pyarrow reads it, walked by Python's csv module (the slow path). A csv error is a
    DataError naming the line."""
    text = _open_text(path, data)
    try:
        if header:
            text.readline()
        reader = csv.reader(text, delimiter=sep, quotechar='"', doublequote=True, strict=False)
        offset, last = (1 if header else 0), 0
        while True:
            start = offset + last + 1  # a record starts on the line after the previous one ended
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path}: line {start}: {e}") from None
            last = reader.line_num
            if fields:
                yield start, fields
    finally:
        _close_text(text, data)


def _line_of_record(path: Path, data: Any, sep: str, header: bool, k: int) -> int:
    """The line on which record ``k`` (0-based, after the header, empty lines skipped) starts.
    Without quote characters a record is a line and the file is scanned as bytes (about 2 s
    per 20M lines); otherwise Python's csv module walks it."""
    raw = data if isinstance(data, io.BytesIO) else open(path, "rb")  # noqa: SIM115
    raw.seek(0)
    try:
        seen = -1
        for number, line in enumerate(raw, 1):
            if b'"' in line or line.find(b"\r", 0, len(line) - 2) >= 0:
                break  # quoting, or a lone CR ending a line: the csv walk below
            if (header and number == 1) or line in (b"\n", b"\r\n"):
                continue
            seen += 1
            if seen == k:
                return number
        else:
            return -1
    finally:
        if raw is not data:
            raw.close()
    for i, (start, _) in enumerate(_records(path, data, sep, header)):
        if i == k:
            return start
    return -1


def _first_bad(arr: Any, role: str, id_type: str) -> int | None:
    """Index of the first value of a raw (binary) column that breaks the rules of
    :func:`_value_problem`, vectorized; None when all hold."""
    import pyarrow as pa
    import pyarrow.compute as pc

    candidates = []
    limit = len(arr)
    try:
        text = arr.cast(pa.string())
    except pa.ArrowInvalid:  # bytes that are not UTF-8: the first such row, by bisection
        lo, hi = 0, len(arr)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                arr.slice(lo, mid - lo).cast(pa.string())
                lo = mid
            except pa.ArrowInvalid:
                hi = mid
        candidates.append(lo)
        limit = lo
        text = arr.slice(0, limit).cast(pa.string())
    if role in ("user", "item"):
        bad = pc.or_(pc.equal(pc.binary_length(text), 0), pc.match_substring(text, "\x00"))
        if id_type == "int":
            canonical = pc.match_substring_regex(text, r"^(0|[1-9][0-9]{0,18})$")
            too_big = pc.and_(pc.equal(pc.binary_length(text), 19), pc.greater(text, _INT64_MAX))
            bad = pc.or_(bad, pc.or_(pc.invert(canonical), too_big))
    else:
        trimmed = pc.utf8_trim(text, " \t")
        number = pc.match_substring_regex(trimmed, "^" + _NUMBER.pattern + "$")
        values = pc.cast(pc.if_else(number, trimmed, "0"), pa.float64())
        bad = pc.or_(pc.invert(number), pc.invert(pc.is_finite(values)))
    if limit:
        i = pc.index(bad, True).as_py()
        if i >= 0:
            candidates.append(i)
    return min(candidates) if candidates else None


def _diagnose(
    path: Path,
    data: Any,
    sep: str,
    header: bool,
    names: list[str],
    index: Mapping[str, int],
    id_type: str,
    hint: str,
) -> None:
    """Find the first bad value or line after the fast reader failed and raise a DataError
    naming it; returns without raising if it finds nothing.

    The file is read again with the mapped columns as raw bytes (nothing to convert, so only
    the structure can fail) and the values are checked vectorized; the line of the first bad
    row is then counted. When even that read fails (a line with the wrong number of fields, a
    quote left open), Python's csv module walks the file to the first such line."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    cols = {role: str(i) for role, i in index.items()}
    if isinstance(data, io.BytesIO):
        data.seek(0)
    try:
        table = pacsv.read_csv(
            data,
            read_options=pacsv.ReadOptions(
                column_names=[str(i) for i in range(len(names))],
                skip_rows=1 if header else 0,
                block_size=1 << 24,
            ),
            parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(dict.fromkeys(cols.values())),
                column_types={c: pa.binary() for c in cols.values()},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        for start, fields in _records(path, data, sep, header):
            if len(fields) != len(names):
                raise DataError(
                    f"{path}: line {start}: expected {len(names)} fields, found {len(fields)}"
                ) from None
        return
    found = []
    for role, c in cols.items():
        arr = table.column(c).combine_chunks()
        k = _first_bad(arr, role, id_type)
        if k is not None:
            found.append((k, role, arr[k].as_py().decode("utf-8", "surrogateescape")))
    if not found:
        return
    k, role, value = min(found, key=lambda x: x[0])
    problem = _value_problem(role, names[index[role]], value, id_type, hint)
    line = _line_of_record(path, data, sep, header, k)
    where = f"line {line}" if line > 0 else f"row {k + 1}"
    raise DataError(f"{path}: {where}: {problem or f'an unexpected value {value[:60]!r}'}")


# -- Parquet, checked the same way -----------------------------------------------------------------
def read_parquet(
    path: Path, columns: Mapping[str, str | None], id_type: str = "int", hint: str = ""
) -> pd.DataFrame:
    """The mapped columns of a Parquet file, checked like :func:`read_delimited` (rows are
    reported 1-based).

    Ids: an integer column gives ``int`` ids, or with ``id_type="str"`` the exact decimal text of
    each integer; a string column gives the texts as written, or with ``id_type="int"`` integers
    checked exactly. A floating-point (or any other) column is refused as ids: a float id column
    is almost always an accident (integers that met a missing value in pandas), and its text
    (``12.0``, ``1e+20``) is not the id anyone wrote. Time and rating: numbers (or timestamps,
    read as seconds since the epoch), finite.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {ID_TYPES}, got {id_type!r}")
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
        if schema.names.count(col) > 1:
            raise DataError(f"{path}: column {col!r} ({role}) is named twice")
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    except (pa.ArrowException, OSError) as e:  # damaged pages, bad compression
        raise DataError(
            f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})"
        ) from None
    out = {}
    for role, col in wanted.items():
        arr = table.column(col)
        if arr.null_count:
            raise DataError(
                f"{path}: row {_first_true(arr.is_null()) + 1}: missing value in column "
                f"{col!r} ({role})"
            )
        if role in ("user", "item"):
            out[role] = _parquet_ids(path, arr, col, role, id_type, hint)
        else:
            out[role] = _parquet_numbers(path, arr, col, role)
    return _frame(out)


def _first_true(mask: Any) -> int:
    import pyarrow.compute as pc

    return int(pc.index(mask, True).as_py())


def _parquet_ids(path: Path, arr: Any, col: str, role: str, id_type: str, hint: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pat

    if pat.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pat.is_integer(t):
        if id_type == "str":
            return _strings(pc.cast(arr, pa.string()))
        bad = pc.less(arr, 0) if pat.is_signed_integer(t) else None
        if pat.is_uint64(t):
            bad = pc.greater(arr, pa.scalar(int(_INT64_MAX), pa.uint64()))
        if bad is not None and pc.any(bad).as_py():
            i = _first_true(bad)
            raise DataError(
                f"{path}: row {i + 1}: "
                f"{_value_problem(role, col, str(arr[i].as_py()), 'int', hint)}"
            )
        return pc.cast(arr, pa.int64()).to_numpy()
    if pat.is_string(t) or pat.is_large_string(t):
        try:
            arr.validate(full=True)
        except pa.ArrowInvalid:
            raise DataError(
                f"{path}: column {col!r} ({role}) holds text that is not valid UTF-8"
            ) from None
        values = _check_ids(arr, id_type)
        if values is not None:
            return values
        for i, text in enumerate(arr.to_pylist()):  # slow path: only after a failure
            problem = _value_problem(role, col, text, id_type, hint)
            if problem:
                raise DataError(f"{path}: row {i + 1}: {problem}")
        raise DataError(f"{path}: column {col!r} ({role}) could not be read as ids")
    raise DataError(
        f"{path}: column {col!r} ({role}) holds {t} values; ids must be integers or strings (a "
        f"{t} id column is almost always an accident, such as integers that met a missing value "
        "in pandas, and 12.0 or 1e+20 is not the id anyone wrote): write it as int64 or string"
    )


def _parquet_numbers(path: Path, arr: Any, col: str, role: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pat

    t = arr.type
    if pat.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pat.is_timestamp(t):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        values = pc.cast(arr, pa.int64()).to_numpy() / per_second
    elif pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t):
        values = pc.cast(arr, pa.float64()).to_numpy()
    elif pat.is_string(t) or pat.is_large_string(t):
        texts = arr.to_pylist()
        for i, text in enumerate(texts):
            problem = _value_problem(role, col, text, "str", "")
            if problem:
                raise DataError(f"{path}: row {i + 1}: {problem}")
        values = np.array([float(x.strip(" \t")) for x in texts], dtype=np.float64)
    else:
        raise DataError(f"{path}: column {col!r} ({role}) holds {t} values; it must be numeric")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: row {i + 1}: column {col!r} ({role}) must be a finite number, got "
            f"{arr[i].as_py()!r}"
        )
    return values


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
            shown = repr(col[0]) if isinstance(col[0], str) else str(col[0])
            raise DataError(
                f"{path}: the {role} column holds a single value ({shown[:60]}); "
                f"a recommendation log needs at least two distinct {role}s"
            )
    return df.reset_index(drop=True)
