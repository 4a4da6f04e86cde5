"""Feature files → :class:`~recsys.data.features.RawFeatures`: item and user attribute tables.

Readers, one per published format (each returns ids of the kind the dataset's log reader
gives, so they match ``split.train.item_ids`` / ``user_ids``):

=============================  ===================================================================
file                           fields
=============================  ===================================================================
S3-Rec ``<Name>_item2attributes.json``  ``attribute`` (multi-valued; the attribute ints as text)
(Amazon Beauty/Sports/Toys, Yelp)
ML-100K ``u.item``             ``genre`` (multi-valued, from the 19 flags; the ``unknown`` flag is
                               no genre), ``year`` (categorical) and ``year_num`` (numeric): the
                               release year, from the release date, else from the title
ML-1M ``movies.dat``,          ``genre`` (``a|b``; ``(no genres listed)`` is no genre), ``year``
ml-latest/20m ``movies.csv``   and ``year_num`` from ``Title (Year)``
ml-latest/20m ``tags.csv``     ``tag`` (multi-valued, lower-cased, stripped); only tags written at
                               or before the latest training event, and none written by an
                               opted-out user (:func:`read_movielens_tags`)
ML-100K ``u.user``,            ``gender``, ``age`` (ML-1M's bands; ML-100K's exact ages put in the
ML-1M ``users.dat``            same bands), ``occupation``; zip codes are never kept
RecBole ``<name>.item/.user``  one field per column: ``token`` categorical, ``token_seq``
                               multi-valued (space-separated), ``float`` numeric; ``float_seq`` is
                               refused by name
a CSV/TSV/Parquet table        ``data.<entity>_feature_columns``: ``{id, categorical: [cols],
                               multi: {col: separator}, numeric: [cols]}``
=============================  ===================================================================

The year is given twice on purpose: as a category it lets a model learn an era's taste without
assuming any order, and as a standardised number it orders a cold item's unseen year.

:func:`load_features` finds the file a data config asks for (``data.item_features`` /
``data.user_features``: ``auto`` = the dataset's published file when present, null = none, a
path = that file, absolute or under the data root) and :func:`feature_files` lists what it reads
(for the cache key). Every bad file is one :class:`~recsys.errors.DataError` line naming file
and line (JSON: line and column), as with the logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.features import ENTITIES, RawFeatures, merge_raw
from recsys.data.sources.files import (
    _NUMBER,
    _first_record,
    _line_of_record,
    data_root,
    is_int_id,
    read_delimited,
    read_parquet,
)
from recsys.errors import ConfigError, DataError

AGE_BANDS = (
    (1, "<18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-49"),
    (50, "50-55"),
    (56, "56+"),
)
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = "(no genres listed)"
_TITLE_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
COLUMN_KEYS = ("id", "categorical", "multi", "numeric")


# -- building RawFeatures ----------------------------------------------------------------------
def _categorical(parts: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Long format from ``(field, rows, values)`` triples (rows: int positions, values: str)."""
    frames = [
        pd.DataFrame(
            {
                "row": np.asarray(rows, dtype=np.int64),
                "field": name,
                "value": np.asarray(values, dtype=object),
            }
        )
        for name, rows, values in parts
        if len(rows)
    ]
    if not frames:
        return pd.DataFrame({"row": np.empty(0, np.int64), "field": [], "value": []})
    return pd.concat(frames, ignore_index=True)


def _ids_array(ids: list[Any], id_type: str) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64 if id_type == "int" else object)


def _check_id(path: Path, line: int, text: str, id_type: str, what: str = "id") -> Any:
    if text == "":
        raise DataError(f"{path}: line {line}: missing {what}")
    if id_type == "int":
        if not is_int_id(text):
            raise DataError(
                f"{path}: line {line}: {what} must be a non-negative integer id (plain digits "
                f"without sign, spaces or leading zeros), got {text[:60]!r}"
            )
        return int(text)
    return text


def _duplicate(path: Path, ids: np.ndarray, entity: str) -> None:
    """Refuse an id given twice: which row would hold its attributes is ambiguous."""
    dup = pd.Series(ids).duplicated()
    if dup.any():
        first = np.asarray(ids)[int(np.argmax(dup.to_numpy()))]
        first = first.item() if isinstance(first, np.generic) else first  # 1, not np.int64(1)
        raise DataError(f"{path}: {entity} {first!r} has two rows")


def _year(text: str) -> float:
    m = _TITLE_YEAR.search(text)
    return float(m.group(1)) if m else np.nan


def _year_fields(years: np.ndarray) -> tuple[tuple[str, np.ndarray, np.ndarray], np.ndarray]:
    """``year`` as categorical rows and ``year_num`` (NaN where unknown)."""
    known = np.flatnonzero(~np.isnan(years))
    return ("year", known, years[known].astype(np.int64).astype(str)), years


# -- S3-Rec item2attributes.json ---------------------------------------------------------------
def read_item2attributes(path: Path, id_type: str = "int", entity: str = "item") -> RawFeatures:
    """S3-Rec ``<Name>_item2attributes.json``: ``{"item id": [attribute, ...]}`` → the
    multi-valued field ``attribute`` (values as text). Keys are ids of ``id_type`` (the S3-Rec
    logs have integer ids); an item with an empty list has a row and no attribute.

    Raises:
        DataError: text that is not JSON (named by line and column), a top level that is not an
            object, a key that is not an id, a key given twice, a value that is not a list or
            an attribute that is not an integer or a string (named by the key).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text (byte {e.start})") from None

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise DataError(f"{path}: key {k[:60]!r} is given twice")
            out[k] = v
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object {{{entity} id: [attribute, ...]}}, got "
            f"{type(data).__name__}"
        )
    ids, rows, values = [], [], []
    for k, (key, attrs) in enumerate(data.items()):
        if id_type == "int" and not is_int_id(key):
            raise DataError(
                f"{path}: key {key[:60]!r} is not an id ({entity} ids are non-negative integers "
                "written exactly)"
            )
        if key == "":
            raise DataError(f"{path}: an empty key is not an id")
        if not isinstance(attrs, list):
            raise DataError(
                f"{path}: {entity} {key[:60]!r}: expected a list of attributes, got "
                f"{type(attrs).__name__}"
            )
        for a in attrs:
            if isinstance(a, bool) or not isinstance(a, int | str):
                raise DataError(
                    f"{path}: {entity} {key[:60]!r}: attribute {a!r} is not an integer or a string"
                )
        ids.append(int(key) if id_type == "int" else key)
        rows.extend([k] * len(attrs))
        values.extend(str(a) for a in attrs)
    return RawFeatures(
        entity=entity,
        ids=_ids_array(ids, id_type),
        categorical=_categorical([("attribute", np.array(rows), np.array(values, dtype=object))]),
        source=str(path),
    )


# -- MovieLens -----------------------------------------------------------------------------------
def _lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers (MovieLens .dat / u.* files are Latin-1)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_bytes().decode(encoding)
    if "\x00" in text:
        raise DataError(f"{path}: holds a NUL character (is it a binary file?)")
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_ml100k_items(path: Path) -> RawFeatures:
    """ML-100K ``u.item``: ``id|title|release date|video date|url|19 genre flags`` (Latin-1) →
    ``genre`` (the flagged genres; the ``unknown`` flag is no genre), ``year`` and ``year_num``
    (release year from ``01-Jan-1995``, else from the title's ``(1995)``)."""
    path = Path(path)
    ids, years, rows, values = [], [], [], []
    width = 5 + len(ML100K_GENRES)
    for k, (n, line) in enumerate(_lines(path, "latin-1")):
        f = line.split("|")
        if len(f) != width:
            raise DataError(f"{path}: line {n}: expected {width} fields, found {len(f)}")
        ids.append(_check_id(path, n, f[0].strip(), "int", "item id"))
        date = f[2].strip()
        if date:
            if not re.fullmatch(r"\d{1,2}-[A-Za-z]{3}-\d{4}", date):
                raise DataError(
                    f"{path}: line {n}: release date must look like 01-Jan-1995, got {date[:60]!r}"
                )
            years.append(float(date[-4:]))
        else:
            years.append(_year(f[1]))
        for g, flag in zip(ML100K_GENRES, f[5:], strict=True):
            if flag not in ("0", "1"):
                raise DataError(f"{path}: line {n}: genre flag {g!r} must be 0 or 1, got {flag!r}")
            if flag == "1" and g != "unknown":
                rows.append(k)
                values.append(g)
    year_rows, year_num = _year_fields(np.array(years, dtype=np.float64))
    ids_arr = _ids_array(ids, "int")
    _duplicate(path, ids_arr, "item")
    return RawFeatures(
        "item",
        ids_arr,
        _categorical([("genre", np.array(rows), np.array(values, dtype=object)), year_rows]),
        {"year_num": year_num},
        str(path),
    )


def read_movielens_movies(path: Path) -> RawFeatures:
    """ML-1M ``movies.dat`` (``id::Title (Year)::a|b``, Latin-1) or ml-latest / ml-20m
    ``movies.csv`` (header ``movieId,title,genres``, UTF-8, quoted titles) → ``genre``
    (``(no genres listed)`` is no genre), ``year`` and ``year_num`` from the title (a title
    without a year has neither)."""
    path = Path(path)
    records: list[tuple[int, list[str]]] = []
    if path.suffix == ".csv":
        import csv

        if not path.is_file():
            raise DataError(f"{path}: no such file")
        with open(path, encoding="utf-8-sig", newline="", errors="strict") as fh:
            try:
                reader = csv.reader(fh, strict=True)
                header = next(reader, [])
                if [h.strip() for h in header] != ["movieId", "title", "genres"]:
                    raise DataError(
                        f"{path}: line 1: expected the header movieId,title,genres, got "
                        f"{','.join(header)[:80]!r}"
                    )
                records = [(reader.line_num, r) for r in reader if r]
            except csv.Error as e:
                raise DataError(f"{path}: line {reader.line_num}: {e}") from None
            except UnicodeDecodeError:
                raise DataError(f"{path}: not valid UTF-8 text") from None
    else:
        records = [(n, line.split("::")) for n, line in _lines(path, "latin-1")]
    ids, years, rows, values = [], [], [], []
    for k, (n, f) in enumerate(records):
        if len(f) != 3:
            raise DataError(f"{path}: line {n}: expected 3 fields, found {len(f)}")
        ids.append(_check_id(path, n, f[0].strip(), "int", "movie id"))
        years.append(_year(f[1]))
        for g in f[2].split("|"):
            g = g.strip()
            if g and g != NO_GENRE:
                rows.append(k)
                values.append(g)
    year_rows, year_num = _year_fields(np.array(years, dtype=np.float64))
    ids_arr = _ids_array(ids, "int")
    _duplicate(path, ids_arr, "item")
    return RawFeatures(
        "item",
        ids_arr,
        _categorical([("genre", np.array(rows), np.array(values, dtype=object)), year_rows]),
        {"year_num": year_num},
        str(path),
    )


def read_movielens_tags(
    path: Path, before: float | None = None, exclude_users: Iterable[str] = ()
) -> RawFeatures:
    """ml-latest / ml-20m ``tags.csv`` (``userId,movieId,tag,timestamp``) → the multi-valued
    ``tag`` of each tagged movie: lower-cased, surrounding spaces stripped, empty tags dropped.

    A tag is written by a user at a time, so it is information of that time: with ``before``
    (the latest training event's time, given when the log has a clock) only tags with
    ``timestamp <= before`` are kept, and a tag written during the validation or test period
    never describes an item. Tags written by a user of ``exclude_users`` (the opt-out list,
    as texts) are dropped, like the rest of that user's data.
    """
    path = Path(path)
    cols = {"user": "userId", "item": "movieId", "time": "timestamp"}
    frame = read_delimited(path, sep=",", header=True, columns=cols, id_type="str")
    tags = _text_columns(path, ",", True, ["tag"])["tag"]
    movie_text = frame["item"].to_numpy()
    bad = [i for i, t in enumerate(movie_text) if not is_int_id(t)]
    if bad:
        line = _line_of_record(path, path, ",", True, bad[0])
        raise DataError(
            f"{path}: line {line}: column 'movieId' must be a non-negative integer id, got "
            f"{movie_text[bad[0]][:60]!r}"
        )
    keep = np.ones(len(frame), dtype=bool)
    if before is not None:
        keep &= frame["time"].to_numpy() <= before
    excluded = set(exclude_users)
    if excluded:
        keep &= ~np.isin(frame["user"].to_numpy().astype(str), np.array(sorted(excluded)))
    tag = pd.Series(tags[keep], dtype=object).str.strip().str.lower()
    movies = movie_text[keep].astype(np.int64)
    ok = (tag != "").to_numpy()
    ids, row = np.unique(movies[ok], return_inverse=True)
    return RawFeatures(
        "item",
        ids.astype(np.int64),
        _categorical([("tag", row.ravel(), tag.to_numpy()[ok])]),
        source=str(path),
    )


def _age_band(age: np.ndarray) -> np.ndarray:
    starts = np.array([s for s, _ in AGE_BANDS])
    labels = np.array([lab for _, lab in AGE_BANDS], dtype=object)
    return labels[np.clip(np.searchsorted(starts, age, side="right") - 1, 0, len(labels) - 1)]


def read_movielens_users(path: Path) -> RawFeatures:
    """ML-100K ``u.user`` (``id|age|gender|occupation|zip``) or ML-1M ``users.dat``
    (``id::gender::age code::occupation code::zip``) → categorical ``gender``, ``age`` (ML-1M's
    bands: ``<18``, ``18-24``, ..., ``56+``; ML-100K's exact ages put in the same bands) and
    ``occupation`` (ML-1M's codes as their labels). The zip code is never kept."""
    path = Path(path)
    ml1m = path.name == "users.dat" or not path.name.startswith("u.")
    sep = "::" if ml1m else "|"
    ids, gender, age, occ = [], [], [], []
    for n, line in _lines(path, "latin-1"):
        f = line.split(sep)
        if len(f) != 5:
            raise DataError(f"{path}: line {n}: expected 5 fields, found {len(f)}")
        if ml1m:
            uid, g, a, o = f[0], f[1], f[2], f[3]
        else:
            uid, a, g, o = f[0], f[1], f[2], f[3]
        ids.append(_check_id(path, n, uid.strip(), "int", "user id"))
        if not a.strip().isdigit():
            raise DataError(f"{path}: line {n}: age must be a whole number, got {a[:60]!r}")
        age.append(int(a))
        gender.append(g.strip())
        if ml1m:
            if not o.strip().isdigit() or int(o) >= len(ML1M_OCCUPATIONS):
                raise DataError(
                    f"{path}: line {n}: occupation must be a code 0..{len(ML1M_OCCUPATIONS) - 1}, "
                    f"got {o[:60]!r}"
                )
            occ.append(ML1M_OCCUPATIONS[int(o)])
        else:
            occ.append(o.strip())
    ids_arr = _ids_array(ids, "int")
    _duplicate(path, ids_arr, "user")
    rows = np.arange(len(ids))
    parts = [
        ("gender", rows, np.array(gender, dtype=object)),
        ("age", rows, _age_band(np.array(age, dtype=np.int64))),
        ("occupation", rows, np.array(occ, dtype=object)),
    ]
    keep = [(name, r[v != ""], v[v != ""]) for name, r, v in parts]  # an empty field: no value
    return RawFeatures("user", ids_arr, _categorical(keep), source=str(path))


# -- tables: RecBole atomic files and a user's own CSV / TSV / Parquet --------------------------
def _text_columns(path: Path, sep: str, header: bool, cols: list[str]) -> dict[str, np.ndarray]:
    """The named columns of a delimited file as object arrays of ``str`` ("" where empty).
    The file's structure was checked by :func:`read_delimited` first."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [c.strip() for c in _first_record(path, path, sep, header)]
    index = {}
    for c in cols:
        if c not in names:
            raise DataError(f"{path}: missing column {c!r}; the file has: {', '.join(names)}"[:400])
        index[c] = str(names.index(c))
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(
            column_names=[str(i) for i in range(len(names))], skip_rows=1 if header else 0
        ),
        parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(dict.fromkeys(index.values())),
            column_types={i: pa.string() for i in index.values()},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    out = {}
    for c, i in index.items():
        arr = table.column(i)
        out[c] = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    return out


def _numbers(values: np.ndarray, where: Any) -> np.ndarray:
    """Texts → float64, NaN where empty; ``where(k, problem)`` raises for the first bad value."""
    out = np.full(len(values), np.nan)
    for k, v in enumerate(values):
        t = "" if v is None else str(v).strip(" \t")
        if t == "":
            continue
        if _NUMBER.fullmatch(t) is None or not np.isfinite(float(t)):
            where(k, f"must be a finite number, got {t[:60]!r}")
        out[k] = float(t)
    return out


def _split_values(values: np.ndarray, sep: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, values) of the non-empty, stripped values of each text (split at ``sep``)."""
    s = pd.Series(values, dtype=object).fillna("").astype(str)
    if sep is not None:
        s = s.str.split(sep, regex=False).explode()
    s = s.str.strip()
    s = s[s != ""]
    return s.index.to_numpy(np.int64), s.to_numpy(dtype=object)


def read_atomic_features(path: Path, entity: str, id_field: str, sep: str = "\t") -> RawFeatures:
    """RecBole atomic ``<name>.item`` / ``<name>.user``: a typed header (``item_id:token
    genre:token_seq price:float``); ``id_field`` (``data.fields.item`` / ``.user``) holds the ids,
    as written (strings, as the atomic log keeps them). Every other column is a field:
    ``token`` categorical, ``token_seq`` multi-valued (space-separated), ``float`` numeric
    (empty: no value). ``float_seq`` columns are refused by name (vectors are not attributes
    this framework encodes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8").rstrip("\r\n").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise DataError(f"{path}: line 1 (the header) is not valid UTF-8 text") from None
    typed: dict[str, tuple[str, str]] = {}
    for h in (h.strip() for h in line.split(sep)):
        name, colon, kind = h.partition(":")
        if not colon or kind not in _ATOMIC_TYPES:
            raise DataError(
                f"{path}: line 1: header field {h[:60]!r} is not '<name>:<type>' with type one "
                f"of {', '.join(_ATOMIC_TYPES)}"
            )
        if kind == "float_seq":
            raise DataError(
                f"{path}: line 1: field {h!r} has type float_seq, which is not read as a feature "
                "(remove the column)"
            )
        typed[name] = (h, kind)
    if id_field not in typed:
        raise DataError(
            f"{path}: missing field {id_field!r} ({entity} ids, data.fields.{entity}); the header "
            f"has: {', '.join(h for h, _ in typed.values())}"
        )
    if typed[id_field][1] != "token":
        raise DataError(f"{path}: field {typed[id_field][0]!r} ({entity} ids) must have type token")
    frame = read_delimited(
        path, sep=sep, header=True, columns={entity: typed[id_field][0]}, id_type="str"
    )
    ids = frame[entity].to_numpy()
    _duplicate(path, ids, entity)
    others = {n: hk for n, hk in typed.items() if n != id_field}
    texts = _text_columns(path, sep, True, [h for h, _ in others.values()])
    parts, numeric = [], {}
    for name, (h, kind) in others.items():
        if kind == "float":

            def where(k: int, problem: str, h: str = h) -> None:
                line = _line_of_record(path, path, sep, True, k)
                raise DataError(f"{path}: line {line}: column {h!r} {problem}")

            numeric[name] = _numbers(texts[h], where)
        else:
            rows, values = _split_values(texts[h], " " if kind == "token_seq" else None)
            parts.append((name, rows, values))
    return RawFeatures(entity, ids, _categorical(parts), numeric, str(path))


def check_columns(mapping: Any, key: str, need_fields: bool = True) -> dict[str, Any]:
    """``data.<entity>_feature_columns`` as a plain dict, its shape checked (a
    :class:`ConfigError` naming the key); ``need_fields``: at least one feature column."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{key} must map id, categorical, multi, numeric, got {mapping!r}")
    unknown = sorted(set(mapping) - set(COLUMN_KEYS))
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {', '.join(unknown)}; use {', '.join(COLUMN_KEYS)}"
        )
    if not isinstance(mapping.get("id"), str) or not mapping["id"]:
        raise ConfigError(f"{key}.id must name the id column")
    out: dict[str, Any] = {"id": mapping["id"]}
    for k in ("categorical", "numeric"):
        v = mapping.get(k) or []
        if isinstance(v, str) or not all(isinstance(c, str) and c for c in v):
            raise ConfigError(f"{key}.{k} must be a list of column names, got {v!r}")
        out[k] = list(v)
    multi = mapping.get("multi") or {}
    if not isinstance(multi, Mapping) or not all(isinstance(s, str) and s for s in multi.values()):
        raise ConfigError(f"{key}.multi must map columns to a separator such as '|', got {multi!r}")
    out["multi"] = {str(c): str(s) for c, s in multi.items()}
    named = [out["id"], *out["categorical"], *out["numeric"], *out["multi"]]
    twice = sorted({c for c in named if named.count(c) > 1})
    if twice:
        raise ConfigError(f"{key}: column {twice[0]!r} is named twice")
    if need_fields and len(named) == 1:
        raise ConfigError(f"{key}: no feature column (set categorical, multi or numeric)")
    return out


def read_feature_table(
    path: Path, entity: str, columns: Mapping[str, Any], id_type: str = "str", key: str = ""
) -> RawFeatures:
    """A CSV, TSV (by extension ``.tsv`` / ``.tab``) or Parquet table with a header, read as
    ``columns`` says: ``id`` (read with the log's ``id_type`` rules, checked exactly),
    ``categorical`` (one value per row), ``multi`` (column → separator) and ``numeric`` (an
    empty cell or a Parquet null: no value). Categorical values are stripped; empty is none."""
    path = Path(path)
    cols = check_columns(columns, key or f"data.{entity}_feature_columns")
    hint = "; data.id_type=str keeps ids exactly as written"
    wanted = [*cols["categorical"], *cols["multi"], *cols["numeric"]]
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        ids = read_parquet(path, {entity: cols["id"]}, id_type=id_type, hint=hint)[entity]
        texts, numbers = _parquet_columns(path, cols)

        def where(k: int, problem: str, col: str) -> None:
            raise DataError(f"{path}: row {k + 1}: column {col!r} {problem}")
    else:
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        ids = read_delimited(
            path, sep=sep, header=True, columns={entity: cols["id"]}, id_type=id_type, hint=hint
        )[entity]
        texts = _text_columns(path, sep, True, wanted)
        numbers = {}

        def where(k: int, problem: str, col: str) -> None:
            line = _line_of_record(path, path, sep, True, k)
            raise DataError(f"{path}: line {line}: column {col!r} {problem}")

    ids = ids.to_numpy()
    _duplicate(path, ids, entity)
    parts = []
    for c in cols["categorical"]:
        parts.append((c, *_split_values(texts[c], None)))
    for c, s in cols["multi"].items():
        parts.append((c, *_split_values(texts[c], s)))
    numeric = {}
    for c in cols["numeric"]:
        if c in numbers:
            numeric[c] = numbers[c]
        else:
            numeric[c] = _numbers(texts[c], lambda k, p, c=c: where(k, p, c))
    return RawFeatures(entity, ids, _categorical(parts), numeric, str(path))


def _parquet_columns(
    path: Path, cols: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Parquet: text of the categorical and multi columns, float64 of numeric columns (NaN for
    nulls); a numeric column of text is parsed like a CSV cell."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as pat

    names = pq.read_schema(path).names
    wanted = [*cols["categorical"], *cols["multi"], *cols["numeric"]]
    for c in wanted:
        if c not in names:
            raise DataError(f"{path}: missing column {c!r}; the file has: {', '.join(names)}"[:400])
    table = pq.read_table(path, columns=wanted)
    texts, numbers = {}, {}
    for c in wanted:
        arr = table.column(c)
        if pat.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        if c in cols["numeric"] and (pat.is_integer(arr.type) or pat.is_floating(arr.type)):
            v = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
            bad = np.isinf(v)
            if bad.any():
                k = int(np.argmax(bad))
                raise DataError(f"{path}: row {k + 1}: column {c!r} must be a finite number")
            numbers[c] = v
            continue
        try:
            text = pc.cast(arr, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{path}: column {c!r} holds {arr.type} values, not text") from None
        texts[c] = np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)
    return texts, numbers


# -- discovery: which file a data config asks for -----------------------------------------------
def _loader(cfg: Mapping[str, Any]) -> str:
    from recsys.data.sources import hashed_name

    source = cfg.get("source")
    return hashed_name(source).rpartition(".")[2] if isinstance(source, str) else ""


def _folder(cfg: Mapping[str, Any]) -> Path:
    return data_root(cfg) / str(cfg.get("folder") or cfg.get("name", ""))


def _published(cfg: Mapping[str, Any], entity: str) -> list[Path]:
    """The dataset's published feature files for ``entity`` that are present (``auto``)."""
    loader, folder = _loader(cfg), _folder(cfg)
    names: list[str] = []
    if loader == "load_user_sequences" and entity == "item" and cfg.get("files"):
        names = [f"{Path(str(cfg['files'][0])).stem}_item2attributes.json"]
    elif loader in ("load_ml100k", "load_ml100k_fold"):
        names = ["u.item"] if entity == "item" else ["u.user"]
    elif loader == "load_ml1m":
        names = ["movies.dat"] if entity == "item" else ["users.dat"]
    elif loader == "load_movielens_csv" and entity == "item":
        names = ["movies.csv", "tags.csv"]
    elif loader == "load_atomic" and cfg.get("name"):
        names = [f"{cfg['name']}.{entity}"]
    return [folder / n for n in names if (folder / n).is_file()]


def feature_files(cfg: Mapping[str, Any], entity: str) -> list[Path]:
    """The files :func:`load_features` reads for ``entity`` (``data.<entity>_features``): none
    for null, the published ones present for ``auto``, else the named file, which must exist
    (a :class:`DataError` naming it and the key)."""
    key = f"{entity}_features"
    value = cfg.get(key)
    if value in (None, "", False):
        return []
    if value == "auto":
        return _published(cfg, entity)
    p = Path(str(value)).expanduser()
    p = p if p.is_absolute() else data_root(cfg) / p
    if not p.is_file():
        raise DataError(f"{p}: no such file (data.{key})")
    return [p]


def _id_type(cfg: Mapping[str, Any]) -> str:
    """The kind of ids the dataset's log reader gives: the csv source's ``data.id_type``, text
    for RecBole tokens, integers for the published formats."""
    loader = _loader(cfg)
    if loader == "load_csv":
        return str(cfg.get("id_type", "str"))
    return "str" if loader == "load_atomic" else "int"


def read_file(
    path: Path,
    entity: str,
    cfg: Mapping[str, Any],
    before: float | None = None,
    exclude_users: Iterable[str] = (),
) -> RawFeatures:
    """One feature file, its reader chosen by its name: ``*.json`` S3-Rec attributes, MovieLens
    ``u.item`` / ``movies.dat`` / ``movies.csv`` / ``tags.csv`` / ``u.user`` / ``users.dat``,
    RecBole ``*.item`` / ``*.user``, else a table read with ``data.<entity>_feature_columns``."""
    name = path.name
    movielens_items = {"u.item": read_ml100k_items, "movies.dat": read_movielens_movies}
    movielens_items["movies.csv"] = read_movielens_movies
    if name.endswith(".json"):
        return read_item2attributes(path, _id_type(cfg), entity)
    if entity == "item" and name in movielens_items:
        return movielens_items[name](path)
    if entity == "item" and name == "tags.csv":
        return read_movielens_tags(path, before, exclude_users)
    if entity == "user" and name in ("u.user", "users.dat"):
        return read_movielens_users(path)
    if path.suffix == f".{entity}":
        fields = cfg.get("fields") or {}
        return read_atomic_features(
            path, entity, str(fields.get(entity) or f"{entity}_id"), str(cfg.get("sep") or "\t")
        )
    key = f"data.{entity}_feature_columns"
    mapping = cfg.get(f"{entity}_feature_columns")
    if not mapping or not (mapping.get("id") if isinstance(mapping, Mapping) else True):
        raise ConfigError(
            f"{key} must say how to read {path} (id, categorical, multi, numeric columns)"
        )
    return read_feature_table(path, entity, mapping, _id_type(cfg), key)


def load_features(
    cfg: Mapping[str, Any],
    entity: str,
    before: float | None = None,
    exclude_users: Iterable[str] = (),
) -> RawFeatures | None:
    """The raw attribute rows of ``entity`` (``"item"`` / ``"user"``) a data config asks for
    (``data.<entity>_features``), or None when there are none. ``before``: the latest training
    event's time, for files whose rows carry a time (tags); ``exclude_users``: the opt-out list
    as texts, for files whose rows carry an author."""
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
    if (
        cfg.get(f"{entity}_features") == "auto"
        and _loader(cfg) == "load"
        and str(cfg.get("source")).startswith("recsys.data.synthetic.")
    ):
        from recsys.data.synthetic import features  # generated with the log: no file

        return features(cfg, entity)
    files = feature_files(cfg, entity)
    if not files:
        return None
    excluded = list(exclude_users)
    return merge_raw(*(read_file(p, entity, cfg, before, excluded) for p in files))


def check_config(cfg: Mapping[str, Any]) -> None:
    """The feature keys, checked before any file is read: ``data.<entity>_features`` a string
    or null, the column mappings well formed, ``data.feature_min_count`` an integer >= 1."""
    for entity in ENTITIES:
        value = cfg.get(f"{entity}_features")
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"data.{entity}_features must be auto, null or a file path, got {value!r}"
            )
        mapping = cfg.get(f"{entity}_feature_columns")
        if mapping is not None:
            check_columns(mapping, f"data.{entity}_feature_columns", need_fields=False)
    m = cfg.get("feature_min_count", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"data.feature_min_count must be an integer >= 1, got {m!r}")


__all__ = [
    "AGE_BANDS",
    "ML1M_OCCUPATIONS",
    "check_config",
    "feature_files",
    "load_features",
    "read_atomic_features",
    "read_feature_table",
    "read_file",
    "read_item2attributes",
    "read_ml100k_items",
    "read_movielens_movies",
    "read_movielens_tags",
    "read_movielens_users",
]
