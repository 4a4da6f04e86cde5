"""Property-based tests of every log reader: whatever bytes are written in a reader's format
(arbitrary rows and id values: floats, huge and negative integers, leading zeros, spaces,
unicode, empty values, separators, quotes, newlines; then damaged bytes: invalid UTF-8, NUL,
truncation, a BOM, random binary), the reader either loads exactly what an independent parse
of those bytes says the file holds, or raises one clean :class:`DataError` line naming the
file. Never another exception, and never an id rewritten.

The independent parse (the "oracle") is written from the formats' rules with Python's csv
module, regular expressions and ``int``/``float``, not from the readers' code: a line ends at
``\\r\\n``, ``\\r`` or ``\\n``; the first line is the header (or the first row) and must be a whole
record; quoting is RFC 4180's; entirely empty lines are skipped; every other record has exactly
as many fields as the first line; an id is the field's text exactly (``str``) or plain ASCII
digits without a leading zero below 2**63 (``int``), never empty, without NUL, valid UTF-8;
time and rating are finite decimal numbers; a log needs two users and two items.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from recsys.data.sources import atomic, lastfm, movielens, sequences, tabular
from recsys.errors import DataError
from tests.conftest import compose_config

SETTINGS = settings(
    # a longer hunt: RECSYS_HYPOTHESIS_EXAMPLES=2000 pytest tests/unit/test_sources_properties.py
    max_examples=int(os.environ.get("RECSYS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ERROR = "error"


def _composed(name: str, *overrides: str) -> dict:
    cfg = compose_config("data_cli", [f"data={name}", *overrides])
    return OmegaConf.to_container(cfg.data, resolve=True)


# composed once, at import: Hydra's first compose imports modules, which must not happen inside a
# Hypothesis example
CONFIGS = {
    name: _composed(name, *extra)
    for name, extra in {
        "csv": (),
        "atomic": ("data.name=x",),
        "amazon-beauty": (),
        "ml-100k": (),
        "ml-1m": (),
        "ml-latest-small": (),
        "lastfm": (),
    }.items()
}


def data_cfg(name: str, root: Path) -> dict:
    return {**CONFIGS[name], "root": str(root), "download": False}


# -- the oracle ------------------------------------------------------------------------------------
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_INT = re.compile(r"0|[1-9][0-9]*")
_NUM = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _surrogates(text: str) -> bool:
    return any(0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _id(text: str, id_type: str):
    if text == "" or "\x00" in text or _surrogates(text):
        return ERROR
    if id_type == "str":
        return text
    if _INT.fullmatch(text) and int(text) < 2**63:
        return int(text)
    return ERROR


def _number(text: str):
    t = text.strip(" \t")
    if not _NUM.fullmatch(t):
        return ERROR
    x = float(t)
    return x if math.isfinite(x) else ERROR


def _usable(out: dict):
    """A log needs events, two distinct users and two distinct items."""
    if not out["user"] or len(set(out["user"])) < 2 or len(set(out["item"])) < 2:
        return ERROR
    return out


def oracle_delimited(raw: bytes, sep: str, header: bool, wanted: dict, id_type: str, width=None):
    """What a delimited file holds: ``{role: [values]}``, or ERROR. ``wanted``: role -> column
    name (header) or 0-based position (no header)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if len(sep) > 1:
        if b"\x1f" in raw:
            return ERROR
        raw = raw.replace(sep.encode(), b"\x1f")
        sep = "\x1f"
    text = raw.decode("utf-8", "surrogateescape")
    lines = _LINE.findall(text)
    if not lines or lines[0].rstrip("\r\n") == "":
        return ERROR
    first = lines[0]
    if header and (_surrogates(first) or "\x00" in first):
        return ERROR
    try:
        fields = next(csv.reader([first], delimiter=sep, strict=True))
    except csv.Error:
        return ERROR
    if header:
        names = [f.strip() for f in fields]
        index = {}
        for role, name in wanted.items():
            if names.count(name) != 1:
                return ERROR
            index[role] = names.index(name)
        body = lines[1:]
    else:
        names = list(range(width if width is not None else len(fields)))
        if any(i >= len(names) for i in wanted.values()):
            return ERROR
        index = dict(wanted)
        body = lines
    out = {role: [] for role in wanted}
    try:
        for record in csv.reader(body, delimiter=sep, strict=False):
            if not record:
                continue
            if len(record) != len(names):
                return ERROR
            for role, i in index.items():
                v = _id(record[i], id_type) if role in ("user", "item") else _number(record[i])
                if v is ERROR:
                    return ERROR
                out[role].append(v)
    except csv.Error:
        return ERROR
    return _usable(out)


def check(load, cfg, path: Path, expected) -> None:
    """The reader's result equals the oracle's: the same values, ids of the same type (``str``
    or ``int``); or, exactly when the oracle says the file is unusable, one DataError line
    naming the file."""
    try:
        df = load(cfg)
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg, msg
        assert expected is ERROR, f"refused a file the oracle loads: {msg}"
        event("DataError")
        return
    event("loaded")
    assert expected is not ERROR, f"loaded a file the oracle refuses: {df.head()}"
    assert set(df.columns) == set(expected)
    for role, values in expected.items():
        got = df[role].tolist()
        assert got == values, (role, got, values)
        if role in ("user", "item"):
            assert all(type(g) is type(v) for g, v in zip(got, values, strict=True))


# -- strategies ------------------------------------------------------------------------------------
ID_TEXT = st.one_of(
    st.integers(0, 2**63 - 1).map(str),
    st.integers(2**63, 10**22).map(str),
    st.integers(-(10**6), -1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        ["007", "0", "00", " 12", "12 ", "1e3", "+5", "3.5", "12.0", "", "NA", "nan", "٣", "é"]
    ),
    st.sampled_from(["a,b", 'q"t', "x\ny", "x\r", "\t7", "a::b", "\x00", "\ufeff1", "1\x1f"]),
    st.sampled_from(["0x1f", "0X1", "-0", "-0x1", "0b1", "0o7", "1_000", "١", "+0", "0.0"]),
    st.text(max_size=6),
)
SMALL_IDS = st.sampled_from(["1", "2", "3", "10", "42"])
IDS = st.one_of(SMALL_IDS, ID_TEXT)
NUMBER_TEXT = st.one_of(
    st.integers(-(10**6), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " 5", "1.", ".5", "x", "1e400", "inf", "nan", "1_0", "5\t", "NA"]),
)
CLEAN_NUMBERS = st.sampled_from(["1", "2.5", "100", "-3", "1e3"])
NUMBERS = st.one_of(CLEAN_NUMBERS, NUMBER_TEXT)
NOTES = st.text(max_size=4)
CLEAN_ROWS = st.lists(st.tuples(SMALL_IDS, SMALL_IDS, CLEAN_NUMBERS, NOTES), max_size=8)


def _inject(rows: list, at: int, field: int, value: str) -> list:
    """``rows`` with one field replaced: a clean log with a single bad (or odd) value."""
    if not rows:
        return rows
    row = list(rows[at % len(rows)])
    row[field] = value
    return [*rows[: at % len(rows)], tuple(row), *rows[at % len(rows) + 1 :]]


# a clean log, a clean log with one arbitrary value, or arbitrary values everywhere
ROWS = st.one_of(
    CLEAN_ROWS,
    st.builds(_inject, CLEAN_ROWS, st.integers(0, 7), st.integers(0, 1), ID_TEXT),
    st.builds(_inject, CLEAN_ROWS, st.integers(0, 7), st.just(2), NUMBER_TEXT),
    st.lists(st.tuples(IDS, IDS, NUMBERS, NOTES), max_size=8),
)
DAMAGE = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("latin1"), st.just(0)),
    st.tuples(st.just("bom"), st.just(0)),
)


def damage(raw: bytes, how, text: str | None = None) -> bytes:
    if how is None:
        return raw
    kind, at, *rest = how
    at = at % (len(raw) + 1)
    if kind == "insert":
        return raw[:at] + rest[0] + raw[at:]
    if kind == "truncate":
        return raw[:at]
    if kind == "latin1" and text is not None:
        return text.encode("latin-1", "replace")
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


def write_rows(header, rows, sep: str, quoting: int, terminator: str) -> str | None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=sep, quoting=quoting, lineterminator=terminator)
    try:
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    except csv.Error:  # a value the writer cannot quote (no escapechar): not a case to test
        return None
    return buf.getvalue()


QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
TERMINATOR = st.sampled_from(["\n", "\r\n"])


# -- the user's own log: CSV / TSV, with and without a header, str and int ids ---------------------
@SETTINGS
@given(
    rows=ROWS,
    sep=st.sampled_from([",", "\t", ";"]),
    quoting=QUOTING,
    terminator=TERMINATOR,
    id_type=st.sampled_from(["str", "int"]),
    how=DAMAGE,
    header=st.booleans(),
)
def test_csv_log(rows, sep, quoting, terminator, id_type, how, header):
    names = ["ts", "uid", "sku", "note"]
    table = [(t, u, i, note) for u, i, t, note in rows]
    text = write_rows(names if header else None, table, sep, quoting, terminator)
    if text is None:
        return
    raw = damage(text.encode("utf-8", "surrogatepass"), how, text)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.txt"
        path.write_bytes(raw)
        cols = (
            {"user": "uid", "item": "sku", "time": "ts"}
            if header
            else {"user": 1, "item": 2, "time": 0}
        )
        cfg = {
            **data_cfg("csv", Path(d)),
            "path": str(path),
            "format": "csv",
            "sep": sep,
            "header": header,
            "id_type": id_type,
            "columns": {**cols, "rating": None},
        }
        expected = oracle_delimited(raw, sep, header, cols, id_type)
        check(tabular.load_csv, cfg, path, expected)


@SETTINGS
@given(raw=st.binary(max_size=64), id_type=st.sampled_from(["str", "int"]))
def test_csv_log_arbitrary_bytes(raw, id_type):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.csv"
        path.write_bytes(raw)
        cfg = {
            **data_cfg("csv", Path(d)),
            "path": str(path),
            "id_type": id_type,
            "columns": {"user": "u", "item": "i", "time": None, "rating": None},
        }
        expected = oracle_delimited(raw, ",", True, {"user": "u", "item": "i"}, id_type)
        check(tabular.load_csv, cfg, path, expected)


# -- the official formats with integer ids: ml-100k, ml-1m, MovieLens csv, Last.fm ---------------
FORMATS = {
    # loader, config, folder, file, separator, header line, roles in file order
    "ml-100k": (movielens.load_ml100k, "ml-100k", "u.data", "\t", None),
    "ml-1m": (movielens.load_ml1m, "ml-1m", "ratings.dat", "::", None),
    "ml-latest-small": (
        movielens.load_movielens_csv,
        "ml-latest-small",
        "ratings.csv",
        ",",
        ["userId", "movieId", "rating", "timestamp"],
    ),
    "lastfm": (
        lastfm.load_lastfm,
        "lastfm-hetrec2011-2k",
        "user_artists.dat",
        "\t",
        ["userID", "artistID", "weight"],
    ),
}


@SETTINGS
@given(
    name=st.sampled_from(sorted(FORMATS)),
    rows=ROWS,
    quoting=QUOTING,
    terminator=TERMINATOR,
    how=DAMAGE,
)
def test_official_formats(name, rows, quoting, terminator, how):
    load, folder, file, sep, header = FORMATS[name]
    if name == "lastfm":
        table = [(u, i, r) for u, i, r, _ in rows]
        wanted = {"user": "userID", "item": "artistID", "rating": "weight"}
    else:
        table = [(u, i, r, r) for u, i, r, _ in rows]
        wanted = (
            {"user": 0, "item": 1, "rating": 2, "time": 3}
            if header is None
            else {"user": "userId", "item": "movieId", "rating": "rating", "time": "timestamp"}
        )
    if sep == "::":  # no quoting in ml-1m's format: a value holding ':' is another case
        text = "".join(sep.join(r) + terminator for r in table)
    else:
        text = write_rows(header, table, sep, quoting, terminator)
        if text is None:
            return
    raw = damage(text.encode("utf-8", "surrogatepass"), how, text)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / folder / file
        path.parent.mkdir()
        path.write_bytes(raw)
        cfg = data_cfg(name, Path(d))
        width = 4 if header is None else None
        expected = oracle_delimited(raw, sep, header is not None, wanted, "int", width)
        check(load, cfg, path, expected)


# -- RecBole atomic files: token ids, kept as written ---------------------------------------------
@SETTINGS
@given(rows=ROWS, quoting=QUOTING, terminator=TERMINATOR, how=DAMAGE)
def test_atomic(rows, quoting, terminator, how):
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    table = [(u, i, r, r) for u, i, r, _ in rows]
    text = write_rows(header, table, "\t", quoting, terminator)
    if text is None:
        return
    raw = damage(text.encode("utf-8", "surrogatepass"), how, text)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x" / "x.inter"
        path.parent.mkdir()
        path.write_bytes(raw)
        cfg = {**data_cfg("atomic", Path(d))}
        check(atomic.load_atomic, cfg, path, oracle_atomic(raw, cfg["fields"]))


def oracle_atomic(raw: bytes, fields: dict):
    """A RecBole ``.inter`` file: a tab-separated header of ``name:type`` fields (user and item
    tokens required, rating and time floats used when present), then the rows."""
    first = _LINE.findall(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape"))
    if not first or _surrogates(first[0]):
        return ERROR
    typed = {}
    for h in (f.strip() for f in first[0].rstrip("\r\n").split("\t")):
        name, colon, kind = h.partition(":")
        if not colon or kind not in ("token", "float", "token_seq", "float_seq"):
            return ERROR
        typed[name] = (h, kind)
    wanted = {}
    for role, name in fields.items():
        if name not in typed:
            if role in ("user", "item"):
                return ERROR
            continue
        full, kind = typed[name]
        if kind != ("token" if role in ("user", "item") else "float"):
            return ERROR
        wanted[role] = full
    return oracle_delimited(raw, "\t", True, wanted, "str")


# -- one line per user: the S3-Rec / ICLRec sequences ---------------------------------------------
def oracle_sequences(raw: bytes):
    if b"\x00" in raw:
        return ERROR
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ERROR
    out = {"user": [], "item": [], "time": []}
    for line in _LINE.findall(text):
        tokens = [t for t in re.split(r"[ \t\n\r\x0b\x0c]+", line) if t]
        ids = [_id(t, "int") for t in tokens]
        if ERROR in ids:
            return ERROR
        for pos, item in enumerate(ids[1:]):
            out["user"].append(ids[0])
            out["item"].append(item)
            out["time"].append(float(pos))
    return _usable(out)


def check_sequences(raw: bytes) -> None:
    """``raw`` as Beauty.txt, loaded by the sequences reader and checked against the oracle."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "beauty" / "Beauty.txt"
        path.parent.mkdir()
        path.write_bytes(raw)
        check(
            sequences.load_user_sequences,
            data_cfg("amazon-beauty", Path(d)),
            path,
            oracle_sequences(raw),
        )


@SETTINGS
@given(
    lines=st.one_of(
        st.lists(st.lists(SMALL_IDS, max_size=5), max_size=6),
        st.builds(
            _inject,
            st.lists(st.lists(SMALL_IDS, min_size=3, max_size=5), max_size=6),
            st.integers(0, 5),
            st.integers(0, 2),
            ID_TEXT,
        ),
        st.lists(st.lists(IDS, max_size=5), max_size=6),
    ),
    spacer=st.sampled_from([" ", "\t", "  "]),
    terminator=st.sampled_from(["\n", "\r\n", "\r"]),
    how=DAMAGE,
)
def test_user_sequences(lines, spacer, terminator, how):
    text = "".join(spacer.join(tokens) + terminator for tokens in lines)
    raw = damage(text.encode("utf-8", "surrogatepass"), how, text)
    check_sequences(raw)


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_user_sequences_arbitrary_bytes(raw):
    check_sequences(raw)


# -- Parquet: typed columns ------------------------------------------------------------------------
def _column(kind: str, values: list):
    if kind == "int64":
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if kind == "uint64":
        return pa.array([None if v is None else int(v) for v in values], pa.uint64())
    if kind == "float64":
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kind == "dictionary":
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, pa.string())


PARQUET_IDS = st.one_of(
    st.tuples(st.just("int64"), st.lists(st.integers(1, 4), max_size=6)),
    st.tuples(st.sampled_from(["string", "dictionary"]), st.lists(SMALL_IDS, max_size=6)),
    st.tuples(
        st.just("int64"), st.lists(st.one_of(st.none(), st.integers(-5, 2**63 - 1)), max_size=6)
    ),
    st.tuples(st.just("uint64"), st.lists(st.integers(0, 2**64 - 1), max_size=6)),
    st.tuples(st.just("float64"), st.lists(st.floats(allow_nan=False), max_size=6)),
    st.tuples(
        st.sampled_from(["string", "dictionary"]), st.lists(st.one_of(st.none(), IDS), max_size=6)
    ),
)
TIMES = st.one_of(
    st.lists(st.floats(0, 1e9), max_size=6),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=6),
)


def oracle_parquet_ids(kind: str, values: list, id_type: str):
    if any(v is None for v in values):
        return ERROR
    if kind in ("int64", "uint64"):
        if id_type == "str":
            return [str(v) for v in values]
        return [v if 0 <= v < 2**63 else ERROR for v in values]
    if kind == "float64":
        return [ERROR] if values else []  # refused as ids, whatever the values
    return [_id(v, id_type) for v in values]


@SETTINGS
@given(
    users=PARQUET_IDS,
    items=PARQUET_IDS,
    times=TIMES,
    id_type=st.sampled_from(["str", "int"]),
)
def test_parquet_log(users, items, times, id_type):
    n = min(len(users[1]), len(items[1]), len(times))
    (uk, uv), (ik, iv), tv = (users[0], users[1][:n]), (items[0], items[1][:n]), times[:n]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.parquet"
        pq.write_table(
            pa.table({"u": _column(uk, uv), "i": _column(ik, iv), "t": pa.array(tv, pa.float64())}),
            path,
        )
        cfg = {
            **data_cfg("csv", Path(d)),
            "path": str(path),
            "id_type": id_type,
            "columns": {"user": "u", "item": "i", "time": "t", "rating": None},
        }
        expected = {
            "user": oracle_parquet_ids(uk, uv, id_type),
            "item": oracle_parquet_ids(ik, iv, id_type),
            "time": [ERROR if t is None or not math.isfinite(t) else t for t in tv],
        }
        refused = uk == "float64" or ik == "float64"  # refused even when empty
        if refused or any(ERROR in v for v in expected.values()):
            expected = ERROR
        else:
            expected = _usable(expected)
        check(tabular.load_csv, cfg, path, expected)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_parquet_arbitrary_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.parquet"
        path.write_bytes(raw)
        cfg = {
            **data_cfg("csv", Path(d)),
            "path": str(path),
            "columns": {"user": "u", "item": "i", "time": None, "rating": None},
        }
        check(tabular.load_csv, cfg, path, ERROR)


def test_the_oracle_reads_a_plain_file():
    """The oracle itself, on a file whose content is known."""
    raw = b'uid,sku,ts\n007,a,1\n3.5,"b,c",2.5\n'
    got = oracle_delimited(raw, ",", True, {"user": "uid", "item": "sku", "time": "ts"}, "str")
    assert got == {"user": ["007", "3.5"], "item": ["a", "b,c"], "time": [1.0, 2.5]}
    assert oracle_delimited(raw, ",", True, {"user": "uid", "item": "sku"}, "int") is ERROR
    assert oracle_sequences(b"1 2 3\r2 3\n") == {
        "user": [1, 1, 2],
        "item": [2, 3, 3],
        "time": [0.0, 1.0, 0.0],
    }
