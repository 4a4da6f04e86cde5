"""Exported artifacts: the file layout, its digest and signature, and :func:`load`.

An artifact directory (written by ``recsys-export``, format version 2) holds:

- ``artifact.json`` — the manifest: format version, model config and sizes, scorer shapes, and
  the SHA-256 and size of every other file (:data:`FILES`; ``artifact.sig`` excepted);
- ``artifact.sig`` — the digest of the whole artifact: ``{"format": "recsys-artifact-digest",
  "manifest_sha256": <SHA-256 of artifact.json's bytes>, "hmac_sha256": <signature or null>}``.
  The manifest lists every other file's SHA-256, so this one value covers every byte of the
  artifact. ``hmac_sha256`` is HMAC-SHA256 over ``b"recsys-artifact-signature\0"`` + the
  manifest's bytes, keyed with the secret in ``$RECSYS_ARTIFACT_KEY`` (:data:`KEY_ENV`) when
  ``recsys-export`` ran with it set;
- ``weights.pt`` — the model's ``state_dict`` (tensors only; ``torch.load(weights_only=True)``);
- ``config.yaml`` — the run's resolved config; ``metrics.json``, ``manifest.json`` of the run;
- ``ids.npz`` — ``user_ids`` and ``item_ids``: the external id of each internal id;
- ``history.npz`` — every known user's items in time order (CSR ``indptr``/``indices``, train +
  validation + test), used as the model input and for ``exclude_seen``; ``item_counts`` for the
  popularity fallback;
- ``embeddings.npz`` — user/item embedding tables, for models that have them (ANN indexes);
  for a model with item attributes, its item vectors (ids and attributes);
- ``features.json`` — the attribute fields the model uses, vocabularies and normalisation
  (version 3; :mod:`recsys.serving.features`): how a new product's or a new customer's
  attributes are encoded. It names no user or item; the codes of known entities are buffers
  of ``weights.pt``, by internal id;
- ``scorer.ts`` (TorchScript) and ``scorer.onnx`` — traced scorers, where the model traces
  cleanly. Both take fixed shapes: ``users`` (R,) int64, ``items`` (N,) int64 and ``offsets``
  (R + 1,) int64 (row r's history is ``items[offsets[r]:offsets[r+1]]``; user id -1 for a
  history of no known user) and return (R, num_items) float32 scores. Callers pack up to R - 1
  real rows and give the last row the unused history slots (its scores are discarded); this
  loader does that.

What loading trusts. Checksums and the digest catch accidents (a truncated copy, a flipped
bit), not tampering: anyone can recompute them. A signature catches tampering: with the key set,
an unsigned or wrongly signed artifact is refused. Whatever the signature, the default backend
(``auto`` = ``eager``) runs no code chosen by the file: the model is rebuilt from
``weights_only`` tensors by :func:`recsys.models.base.build_model`, whose ``_target_`` may name
only recsys' own models or packages the caller trusts (:mod:`recsys.trust`). ``torchscript``
executes code stored in ``scorer.ts`` (TorchScript can read and write files), so it runs only
when asked for by name: use it for artifacts you trust. ``onnx`` runs a graph of operators in
onnxruntime; it too is used only when asked for.

Version 1 artifacts (no ``artifact.sig``) still load, as unsigned: their per-file checksums are
checked, and the default backend never runs code from them, so the digest would add protection
against accidents only. With a key set they are refused like any unsigned artifact, so removing
the signature file and claiming version 1 is no way around a signature. Version 3 is version 2
plus ``features.json``; artifacts of models without attributes are still written as version 2.

This module imports neither Hydra nor Lightning: a service needs torch and numpy only (and
onnxruntime for the ONNX backend).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import CheckpointError, ConfigError, RecsysError
from recsys.serving import features as feature_file
from recsys.serving.features import NewEntities, check_k
from recsys.trust import Trust

FORMAT = "recsys-artifact"
VERSION = 3  # the newest this reads; exports of id-only models are written as version 2
MANIFEST = "artifact.json"
SIGNATURE = "artifact.sig"
SIGNATURE_FORMAT = "recsys-artifact-digest"
KEY_ENV = "RECSYS_ARTIFACT_KEY"  # secret key: recsys-export signs, loading requires a signature
_SIGNED = b"recsys-artifact-signature\0"  # domain label: the key may serve other HMACs too
# every file an artifact may hold besides artifact.json and artifact.sig; the first four always
FILES = (
    "weights.pt",
    "config.yaml",
    "ids.npz",
    "history.npz",
    "embeddings.npz",
    "features.json",
    "metrics.json",
    "manifest.json",
    "scorer.ts",
    "scorer.onnx",
)
REQUIRED_FILES = FILES[:4]
BACKENDS = ("auto", "eager", "torchscript", "onnx")
# LoadedRecommender.signature
VERIFIED = "verified"  # signed, and the signature matches the key in $RECSYS_ARTIFACT_KEY
UNSIGNED = "unsigned"  # no signature (no key set: the digest and checksums were checked)
NOT_CHECKED = "not checked (no key)"  # signed, but no key is set to check it with


class UnknownIdError(RecsysError, KeyError):
    """An external user or item id the artifact does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def artifact_key() -> bytes | None:
    """The signing key in :data:`KEY_ENV` (its UTF-8 bytes), or None when unset or empty."""
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def _hmac(manifest: bytes, key: bytes) -> str:
    return hmac.new(key, _SIGNED + manifest, hashlib.sha256).hexdigest()


def _record(manifest_sha256: str, hmac_sha256: str | None) -> bytes:
    record = {
        "format": SIGNATURE_FORMAT,
        "manifest_sha256": manifest_sha256,
        "hmac_sha256": hmac_sha256,
    }
    return (json.dumps(record, indent=2) + "\n").encode()


def signature_record(manifest: bytes, key: bytes | None) -> bytes:
    """The bytes of ``artifact.sig`` for the manifest bytes ``manifest``, signed with ``key``
    when given. There is one spelling of each record: a reader refuses any other."""
    return _record(hashlib.sha256(manifest).hexdigest(), _hmac(manifest, key) if key else None)


def signature_note(state: str) -> str:
    """One line for a person: what :func:`read_artifact` found about the signature."""
    return {
        VERIFIED: f"signature verified (HMAC-SHA256, key from {KEY_ENV})",
        UNSIGNED: f"unsigned (checksums verified; set {KEY_ENV} to require a signature)",
        NOT_CHECKED: f"signed, signature not checked ({KEY_ENV} is not set)",
    }[state]


def _check_signature(d: Path, manifest: bytes, key: bytes | None) -> str:
    """The signature state of ``manifest`` (the bytes of ``artifact.json``) against
    ``artifact.sig``: refused if the record is malformed or the digest differs, or, with a key,
    if the signature is missing or differs."""
    path = d / SIGNATURE
    try:
        raw = path.read_bytes()
        record = json.loads(raw)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); re-export the artifact") from None
    keys = ["format", "manifest_sha256", "hmac_sha256"]
    if not isinstance(record, dict) or sorted(record) != sorted(keys):
        raise CheckpointError(f"{path}: not a recsys artifact digest (keys {', '.join(keys)})")
    digest, signed = record["manifest_sha256"], record["hmac_sha256"]
    for name, value in (("manifest_sha256", digest), ("hmac_sha256", signed)):
        if not _is_hex64(value) and (value is not None or name == "manifest_sha256"):
            raise CheckpointError(f"{path}: {name} must be 64 lowercase hex digits")
    if record["format"] != SIGNATURE_FORMAT or raw != _record(digest, signed):
        raise CheckpointError(f"{path}: not a recsys artifact digest as recsys-export writes it")
    if not hmac.compare_digest(digest, hashlib.sha256(manifest).hexdigest()):
        raise CheckpointError(
            f"{path}: manifest_sha256 does not match {MANIFEST} (altered or corrupted); "
            "re-export the artifact"
        )
    if key is None:
        return UNSIGNED if signed is None else NOT_CHECKED
    if signed is None:
        raise CheckpointError(
            f"{path}: the artifact is unsigned and {KEY_ENV} is set: refusing it (export it "
            f"again with {KEY_ENV} set, or unset {KEY_ENV} to load unsigned artifacts)"
        )
    if not hmac.compare_digest(signed, _hmac(manifest, key)):
        raise CheckpointError(
            f"{path}: hmac_sha256 does not match the key in {KEY_ENV} (altered, or signed with "
            "another key): refusing the artifact"
        )
    return VERIFIED


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _validate(meta: Any, path: Path) -> dict[str, Any]:
    """``meta`` (the parsed ``artifact.json``) if its structure is a manifest's, else one
    :class:`CheckpointError` line naming ``path`` and the key."""

    def bad(key: str, what: str, value: Any = ...) -> CheckpointError:
        got = "" if value is ... else f", got {value!r}"[:120]
        return CheckpointError(f"{path}: {key} must be {what}{got}")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a recsys artifact manifest (no format: {FORMAT})")
    version = meta.get("version")
    if not _is_int(version, 1):
        raise bad("version", "a positive integer", version)
    if version > VERSION:
        raise CheckpointError(
            f"{path}: artifact version {version} is newer than this recsys reads ({VERSION}); "
            "upgrade recsys"
        )
    types: dict[str, tuple[tuple[type, ...], str]] = {
        "format": ((str,), "a string"),
        "version": ((int,), "an integer"),
        "model": ((dict,), "a mapping with _target_"),
        "num_users": ((int,), "a positive integer"),
        "num_items": ((int,), "a positive integer"),
        "supports_history": ((bool,), "true or false"),
        "scorer": ((dict,), "a mapping"),
        "embeddings": ((list,), "a list"),
        "embeddings_source": ((str, type(None)), "a string or null"),
        "data": ((dict, type(None)), "a mapping or null"),
        "source_checkpoint": ((str, type(None)), "a string or null"),
        "pseudonymized_users": ((dict, type(None)), "a mapping or null"),
        "files": ((dict,), "a mapping of file name to checksum"),
    }
    for key in meta:
        if key not in types:
            raise CheckpointError(f"{path}: unknown key {key!r} (expected {', '.join(types)})")
    for key in ("model", "num_users", "num_items", "scorer", "files"):
        if key not in meta:
            raise CheckpointError(f"{path}: {key} is missing")
    for key, value in meta.items():
        allowed, what = types[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise bad(key, what, value)
    for key in ("num_users", "num_items"):
        if not _is_int(meta[key], 1):
            raise bad(key, "a positive integer", meta[key])
    target = meta["model"].get("_target_")
    if not isinstance(target, str):
        raise bad("model._target_", "a dotted class path", target)
    for i, e in enumerate(meta.get("embeddings", [])):
        if e not in ("user", "item"):
            raise bad(f"embeddings[{i}]", "'user' or 'item'", e)

    files = meta["files"]
    for name, info in files.items():
        if name not in FILES:
            raise CheckpointError(
                f"{path}: files: {name!r} is not a file of an artifact (one of {', '.join(FILES)})"
            )
        if not isinstance(info, dict) or set(info) != {"sha256", "bytes"}:
            raise bad(f"files.{name}", "a mapping with sha256 and bytes", info)
        if not _is_hex64(info["sha256"]):
            raise bad(f"files.{name}.sha256", "64 lowercase hex digits", info["sha256"])
        if not _is_int(info["bytes"], 0):
            raise bad(f"files.{name}.bytes", "a non-negative integer", info["bytes"])
    for name in REQUIRED_FILES:
        if name not in files:
            raise CheckpointError(f"{path}: files: {name} is missing")
    if meta.get("embeddings") and "embeddings.npz" not in files:
        raise CheckpointError(f"{path}: files: embeddings.npz is missing (embeddings are listed)")

    scorer = meta["scorer"]
    known = {"rows", "length", "torchscript", "onnx", "torchscript_error", "onnx_error"}
    for key in scorer:
        if key not in known:
            raise CheckpointError(f"{path}: scorer: unknown key {key!r}")
    if not _is_int(scorer.get("rows"), 2):
        raise bad("scorer.rows", "an integer >= 2", scorer.get("rows"))
    if not _is_int(scorer.get("length"), 1):
        raise bad("scorer.length", "a positive integer", scorer.get("length"))
    for kind, fname in (("torchscript", "scorer.ts"), ("onnx", "scorer.onnx")):
        name = scorer.get(kind)
        if name not in (None, fname):
            raise bad(f"scorer.{kind}", f"{fname!r} or null", name)
        if name is not None and name not in files:
            raise CheckpointError(f"{path}: files: {name} is missing (scorer.{kind} names it)")
        if not isinstance(scorer.get(f"{kind}_error", ""), str):
            raise bad(f"scorer.{kind}_error", "a string", scorer[f"{kind}_error"])
    return meta


def read_artifact(directory: str | Path, verify: bool = True) -> tuple[dict[str, Any], str]:
    """``artifact.json`` of ``directory`` and the signature state (:data:`VERIFIED`,
    :data:`UNSIGNED` or :data:`NOT_CHECKED`).

    The manifest's bytes are checked against ``artifact.sig`` (and its signature, when
    ``$RECSYS_ARTIFACT_KEY`` is set) before anything in them is used, then its structure;
    ``verify``
    also checks every listed file against its size and SHA-256. Anything wrong: one
    :class:`CheckpointError` line naming the file (and the key)."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        what = "not a directory" if d.exists() else "no such artifact directory"
        raise CheckpointError(f"{d}: {what}")
    if not path.is_file():
        raise CheckpointError(
            f"{d}: not an artifact directory (no {MANIFEST}; create one with recsys-export)"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror})") from None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, a 5000-digit number, ...
        meta, error = None, e
    peek = meta if isinstance(meta, dict) else {}
    if peek.get("format") == FORMAT and _is_int(peek.get("version"), VERSION + 1):
        _validate(meta, path)  # says: newer than this recsys (its digest may be another's)
    key = artifact_key()
    has_signature = (d / SIGNATURE).is_file()
    state = _check_signature(d, raw, key) if has_signature else UNSIGNED
    if meta is None:
        raise CheckpointError(f"{path}: corrupted or truncated ({error})")
    meta = _validate(meta, path)
    if not has_signature:
        if meta["version"] >= 2:
            raise CheckpointError(f"{d / SIGNATURE}: missing (a version 2 artifact has one)")
        if key is not None:
            raise CheckpointError(
                f"{d}: a version 1 artifact is unsigned and {KEY_ENV} is set: refusing it "
                f"(export it again with {KEY_ENV} set)"
            )
    if verify:
        for name, info in meta["files"].items():
            f = d / name
            if not f.is_file():
                raise CheckpointError(f"{f}: missing from the artifact")
            size = f.stat().st_size
            if size != info["bytes"]:
                raise CheckpointError(
                    f"{f}: corrupted or truncated ({size} bytes, expected {info['bytes']}); "
                    "re-export the artifact"
                )
            if sha256(f) != info["sha256"]:
                raise CheckpointError(f"{f}: corrupted (checksum mismatch); re-export the artifact")
    return meta, state


def read_manifest(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """``artifact.json`` of ``directory``, checked as :func:`read_artifact` does."""
    return read_artifact(directory, verify)[0]


def _npz(path: Path, keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (no pickles), which must hold ``keys``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - truncated zip, wrong format
        raise CheckpointError(f"{path}: not readable ({e})") from None
    for k in keys:
        if k not in arrays:
            raise CheckpointError(f"{path}: no array {k!r}")
    return arrays


GEMV_ROWS = 4  # dot_rows: below this many rows, one matrix-vector product per row


def dot_rows(q: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``out = q @ table`` for (n, d) user vectors and a (d, I) item table. Below
    :data:`GEMV_ROWS` rows, one matrix-vector product per row: OpenBLAS multiplies 2-3 rows by a
    large table 1.5-1.8x slower than 2-3 matrix-vector products do, and a micro-batch of the
    service is mostly that small (benchmarks/serving.md)."""
    if len(q) < GEMV_ROWS:
        for r in range(len(q)):
            np.matmul(q[r], table, out=out[r])
    else:
        np.matmul(q, table, out=out)


def _id_key(value: Any, dtype: np.dtype) -> Any:
    """Normalize an external id given by a caller (often a string from a shell) to the map's type."""
    if dtype.kind in "iu":
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    if dtype.kind == "f":
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return str(value)


def pack(
    rows: int, length: int, users: Sequence[int], histories: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-shape scorer input for up to ``rows - 1`` real rows: users (R,), items (N,), offsets (R+1,).

    The last row is filler: user 0 with item 0 repeated over the unused history slots.
    """
    if len(users) > rows - 1:
        raise ValueError(f"at most {rows - 1} rows per call")
    u = np.zeros(rows, dtype=np.int64)
    u[: len(users)] = users
    offsets = np.zeros(rows + 1, dtype=np.int64)
    lengths = [len(h) for h in histories]
    offsets[1 : len(users) + 1] = np.cumsum(lengths) if lengths else []
    offsets[len(users) + 1 :] = offsets[len(users)]
    offsets[-1] = length
    items = np.zeros(length, dtype=np.int64)
    used = int(offsets[len(users)])
    if used > length:
        raise ValueError(f"histories hold {used} items, more than the scorer's {length}")
    if histories:
        items[:used] = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    return u, items, offsets


def chunks(lengths: Sequence[int], rows: int, length: int) -> Iterable[tuple[int, int]]:
    """Consecutive [start, end) runs of rows that fit one fixed-shape call."""
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= rows - 1 or used + n > length):
            yield start, i
            start, used = i, 0
        used += n
    if start < len(lengths):
        yield start, len(lengths)


class _SimilarItems:
    """``similar_items``: items that go well with given items ("goes well with")."""

    def similar_items(
        self, items: Sequence[Any], k: int = 10, method: str = "auto"
    ) -> list[dict[str, Any]]:
        """For each external item id, the ``k`` most similar other items: ``[{"item", "items",
        "scores"}, ...]``.

        ``method``: ``"embedding"`` (cosine of the artifact's item embeddings), ``"cooccurrence"``
        (cosine of the items' user sets in the artifact's history: the number of users who
        interacted with both, over the geometric mean of each item's users) or ``"auto"``
        (embeddings when the artifact has an item table, else co-occurrence). Ties by item id.
        """
        check_k(k)
        if method not in ("auto", "embedding", "cooccurrence"):
            raise RecsysError(f"method must be auto, embedding or cooccurrence, got {method!r}")
        has_emb = "item" in (self.meta.get("embeddings") or [])
        if method == "embedding" and not has_emb:
            raise RecsysError(f"{self.dir}: no item embeddings (use method='cooccurrence')")
        use_emb = has_emb and method != "cooccurrence"
        idx = self.item_index(items)
        out = []
        for ext, i in zip(items, idx, strict=False):
            sims = self._item_cosine(i) if use_emb else self._cooccurrence(i)
            sims = sims.astype(np.float64)
            sims[i] = -np.inf
            top, scores = self._top(sims, None, k, own=True)  # sims: a new float64 copy
            out.append(
                {
                    "item": ext,
                    "items": top,
                    "scores": scores,
                    "method": "embedding" if use_emb else "cooccurrence",
                }
            )
        return out

    def _item_cosine(self, i: int) -> np.ndarray:
        if getattr(self, "_item_unit", None) is None:
            table = _npz(self.dir / "embeddings.npz", ["item"])["item"].astype(np.float64)
            if table.ndim != 2 or len(table) != self.num_items:
                raise CheckpointError(
                    f"{self.dir / 'embeddings.npz'}: item does not have {self.num_items} rows"
                )
            norm = np.linalg.norm(table, axis=1, keepdims=True)
            self._item_unit = table / np.where(norm > 0, norm, 1.0)
        return self._item_unit @ self._item_unit[i]

    def _cooccurrence(self, i: int) -> np.ndarray:
        if getattr(self, "_by_item", None) is None:
            import scipy.sparse as sp

            rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
            x = sp.csr_matrix(
                (np.ones(len(rows)), (rows, self.indices)),
                shape=(len(self.indptr) - 1, self.num_items),
            )
            x.data[:] = 1.0  # repeated events count once
            self._by_item = x.T.tocsr()  # (I, U)
            self._item_users = np.asarray(self._by_item.sum(1)).ravel()
        co = np.asarray((self._by_item @ self._by_item[i].T).todense()).ravel()
        denom = np.sqrt(self._item_users * max(self._item_users[i], 1.0))
        return np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)

    def item_titles(self, data_root: str | None = None) -> dict[str, str]:
        """External item id (string) → title, from the dataset's metadata file (MovieLens
        ``u.item`` / ``movies.dat`` / ``movies.csv``, Last.fm ``artists.dat``); empty when the
        dataset has none or its folder is not reachable from here."""
        import yaml

        from recsys.data.metadata import item_titles

        try:
            config = yaml.safe_load((self.dir / "config.yaml").read_text())
            data = dict(config.get("data") or {})
            if data_root is not None:
                data["root"] = data_root
            return item_titles(data) or {}
        except Exception:  # noqa: BLE001 - titles are optional
            return {}


def pseudonym(user: Any, key: str | bytes) -> str:
    """The keyed hash (HMAC-SHA256, hex) that pseudonymized exports use for external user id
    ``user``; ``key`` is the secret (``export.pseudonymize_key_env`` names its variable)."""
    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, str(user).encode(), hashlib.sha256).hexdigest()


class LoadedRecommender(_SimilarItems, NewEntities):
    """Top-k recommendations from an exported artifact, with external ids in and out.

    Backends: ``"auto"`` = ``"eager"`` (the model rebuilt by recsys' own code from the
    ``weights_only`` tensors of ``weights.pt``: nothing the file chooses runs); ``"onnx"``
    (the traced graph in onnxruntime); ``"torchscript"`` (the traced scorer: this *executes code
    stored in the artifact*, which can read and write files; use it only for artifacts you
    trust, e.g. signed ones). ``trust``: packages besides recsys whose models ``artifact.json``
    may name (as :mod:`recsys.trust`; also ``$RECSYS_TRUSTED_PACKAGES``).

    ``trace``: history models of the transformer family (SASRec) score histories with a fast
    path built here, at first use, from the eager model, after checking that it reproduces the
    model: a closed form for one-block models, else a traced graph
    (:mod:`recsys.serving.history`; ``history_path`` says which is used, or why neither);
    ``False`` keeps the eager encoder. Nothing from the artifact is traced or run.

    ``screen``: dot-product models with a large catalogue (eager backend) rank one to three
    queries at a time through an int8 copy of the item table and rescore the few candidates
    it cannot rule out in float32 (:mod:`recsys.serving.screen`): the same top-k as the whole
    float32 product from a quarter of the bytes; ``scan_path`` says which path ranks.
    ``False`` keeps the whole product.

    ``signature``: :data:`VERIFIED`, :data:`UNSIGNED` or :data:`NOT_CHECKED` (see
    :func:`read_artifact`; with ``$RECSYS_ARTIFACT_KEY`` set, anything but a valid signature is
    refused).

    Models trained with attributes (``features``: the fields of ``features.json``, else None)
    also answer for what the catalogue and the customer file do not hold yet
    (:class:`~recsys.serving.features.NewEntities`)::

        art.score_new_items([{"genre": ["Drama"]}], users=[42])  # (1, 1) scores
        art.recommend([42], k=10, new_items={"sku-9": {"genre": ["Drama"]}})
        art.top_users({"genre": ["Drama"]}, k=100)                # who to tell about it
        art.similar({"genre": ["Drama"]}, k=10)                   # catalogue items like it
        art.recommend(history=["7", "31"], k=10)                  # a new customer (SASRec, ...)
        art.recommend(attributes={"age": "25-34"}, k=10)          # ... (MF/NCF, user features)
    """

    def __init__(
        self,
        directory: str | Path,
        backend: str = "auto",
        trust: Iterable[str] | str | None = None,
        trace: bool = True,
        screen: bool = True,
    ):
        import torch

        if backend not in BACKENDS:
            raise RecsysError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.dir = Path(directory)
        # what artifact.json may name for construction (recsys.trust): recsys' own models and
        # the packages the caller names (plus $RECSYS_TRUSTED_PACKAGES), never its own choice
        self.trust = Trust.for_file(self.dir / MANIFEST, trust)
        self.meta, self.signature = read_artifact(self.dir)
        self.num_users, self.num_items = int(self.meta["num_users"]), int(self.meta["num_items"])
        ids = _npz(self.dir / "ids.npz", ("user_ids", "item_ids"))
        self.user_ids, self.item_ids = ids["user_ids"], ids["item_ids"]
        hist = _npz(self.dir / "history.npz", ("indptr", "indices", "item_counts"))
        self.indptr, self.indices = hist["indptr"], hist["indices"]
        self.item_counts = hist["item_counts"]
        self._check_tables()
        files = self.meta["files"]
        self.features = (
            feature_file.read(self.dir / feature_file.FILE) if feature_file.FILE in files else None
        )
        self._user_index = {
            _id_key(u, self.user_ids.dtype): i for i, u in enumerate(self.user_ids.tolist())
        }
        self._item_index = {
            _id_key(v, self.item_ids.dtype): i for i, v in enumerate(self.item_ids.tolist())
        }
        self.rows, self.length = (
            int(self.meta["scorer"]["rows"]),
            int(self.meta["scorer"]["length"]),
        )
        self.supports_history = bool(self.meta.get("supports_history"))
        self.backend = "eager" if backend == "auto" else backend
        self._torch = torch
        # history models of the transformer family: user vectors from a fast path built here
        # from the eager model (recsys.serving.history), when it reproduces the model;
        # history_path says which path scores histories once one was needed
        self._histories = None if trace else False
        self.history_path = "not used yet" if trace else "eager (trace=False)"
        self._scan = None if screen else False
        self.scan_path = "not used yet" if screen else "float32 product (screen=False)"
        self.model = None  # the eager model (built here for eager, on first need otherwise)
        if self.backend == "torchscript":
            name = self._scorer_file("torchscript")
            try:  # runs code stored in the file: only on request (see the class docstring)
                self._ts = torch.jit.load(str(self.dir / name), map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(
                    f"{self.dir / name}: not a loadable TorchScript file ({e})"
                ) from None
        elif self.backend == "onnx":
            name = self._scorer_file("onnx")
            try:
                import onnxruntime as ort
            except ImportError:
                raise RecsysError(
                    "backend onnx needs onnxruntime (pip install -e '.[export]')"
                ) from None
            try:
                self._ort = ort.InferenceSession(
                    str(self.dir / name), providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                raise CheckpointError(
                    f"{self.dir / name}: not a loadable ONNX graph ({first})"
                ) from None
            self._ort_inputs = {i.name for i in self._ort.get_inputs()}
        else:
            self.model = self._eager_model()

    def _scorer_file(self, kind: str) -> str:
        name = self.meta["scorer"].get(kind)
        if not name:
            why = self.meta["scorer"].get(f"{kind}_error")
            raise CheckpointError(f"{self.dir}: no {kind} scorer ({why}); use backend='eager'")
        return name

    def _check_tables(self) -> None:
        """The id maps and histories have the manifest's sizes and stay in range (a malformed
        file is refused here, not met as an IndexError while recommending)."""
        n_u, n_i = self.num_users, self.num_items
        checks = (
            ("ids.npz", "user_ids", self.user_ids.ndim == 1 and len(self.user_ids) == n_u),
            ("ids.npz", "item_ids", self.item_ids.ndim == 1 and len(self.item_ids) == n_i),
            ("history.npz", "item_counts", self.item_counts.shape == (n_i,)),
            (
                "history.npz",
                "indptr",
                self.indptr.shape == (n_u + 1,)
                and self.indptr.dtype.kind in "iu"
                and self.indptr[0] == 0
                and self.indptr[-1] == len(self.indices)
                and bool((np.diff(self.indptr) >= 0).all()),
            ),
            (
                "history.npz",
                "indices",
                self.indices.ndim == 1
                and self.indices.dtype.kind in "iu"
                and (len(self.indices) == 0 or 0 <= self.indices.min() <= self.indices.max() < n_i),
            ),
        )
        for name, key, ok in checks:
            if not ok:
                raise CheckpointError(
                    f"{self.dir / name}: {key} does not fit the manifest "
                    f"({n_u} users, {n_i} items); re-export the artifact"
                )

    def _eager_model(self):
        from recsys.models.base import build_model

        torch = self._torch
        where, path = self.dir / MANIFEST, self.dir / "weights.pt"
        cfg, sizes = self.meta["model"], (self.num_users, self.num_items)
        schema = self.features.schema() if self.features is not None else None
        try:
            with torch.device("meta"):  # shapes only, no memory: the size the manifest asks for
                shape = build_model(cfg, *sizes, self.trust, schema)
            need = sum(t.numel() * t.element_size() for t in shape.state_dict().values())
            if need > 2 * path.stat().st_size + (1 << 20):
                raise CheckpointError(
                    f"{where}: model describes {need / 2**20:.1f} MiB of weights, weights.pt "
                    f"holds {path.stat().st_size / 2**20:.1f} MiB; re-export the artifact"
                )
            model = build_model(cfg, *sizes, self.trust, schema)
        except ConfigError as e:  # a hyper-parameter the model refuses: name the file
            raise CheckpointError(f"{where}: {e}") from None
        except RuntimeError as e:  # e.g. an allocation the values ask for fails
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise CheckpointError(f"{where}: model cannot be built ({first})") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # noqa: BLE001
            why = " ".join(str(e).split())[:300] or type(e).__name__  # one line
            raise CheckpointError(
                f"{path}: weights not loadable into {self.meta['model']['_target_']} ({why})"
            ) from None
        return model.eval()

    # -- ids -------------------------------------------------------------------------------
    def user_index(self, users: Iterable[Any], allow_unknown: bool = False) -> list[int | None]:
        return self._index(users, "user", allow_unknown, "for a popularity answer")

    def item_index(self, items: Iterable[Any], allow_unknown: bool = False) -> list[int | None]:
        return self._index(items, "item", allow_unknown, "to ignore them")

    def _index(
        self, ids: Iterable[Any], kind: str, allow_unknown: bool, fallback: str
    ) -> list[int | None]:
        """Internal indices of external ``ids`` (None for unknown ones when ``allow_unknown``)."""
        ids = list(ids)
        table, dtype = (
            (self._user_index, self.user_ids.dtype)
            if kind == "user"
            else (self._item_index, self.item_ids.dtype)
        )
        out = [table.get(_id_key(v, dtype)) for v in ids]
        if not allow_unknown and None in out:
            bad = [v for v, i in zip(ids, out, strict=True) if i is None][:5]
            known = self.num_users if kind == "user" else self.num_items
            raise UnknownIdError(
                f"unknown {kind} id(s): {', '.join(map(str, bad))} (the artifact knows {known} {kind}s; "
                f"use fallback='popular' (CLI: --fallback popular) {fallback})"
            )
        return out

    def history(self, user: int) -> np.ndarray:
        """Internal item ids the (internal) user has seen, oldest first."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    # -- scoring ---------------------------------------------------------------------------
    def score(self, users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
        """(n, num_items) float32 scores for internal user ids (-1: none) with their histories."""
        histories = [np.asarray(h, dtype=np.int64)[-self.length :] for h in histories]
        out = np.empty((len(users), self.num_items), dtype=np.float32)
        if self.backend == "eager" and self._dot_table() is not None:  # user vectors · items
            for s in range(0, len(users), 256):
                q = self._query_vectors(users[s : s + 256], histories[s : s + 256])
                dot_rows(q, self._dot, out[s : s + 256])
            return out
        if self.backend == "eager":
            from recsys.data.batches import UserBatch

            with self._torch.inference_mode():
                for s in range(0, len(users), 256):
                    b = UserBatch.from_lists(
                        list(users[s : s + 256]), [h.tolist() for h in histories[s : s + 256]]
                    )
                    out[s : s + 256] = self.model.score(b).float().numpy()
            return out
        for s, e in chunks([len(h) for h in histories], self.rows, self.length):
            u, items, offsets = pack(self.rows, self.length, users[s:e], histories[s:e])
            if self.backend == "torchscript":
                t = self._torch
                with t.no_grad():
                    scores = self._ts(
                        t.from_numpy(u), t.from_numpy(items), t.from_numpy(offsets)
                    ).numpy()
            else:
                feed = {
                    k: v
                    for k, v in (("users", u), ("items", items), ("offsets", offsets))
                    if k in self._ort_inputs
                }
                scores = self._ort.run(None, feed)[0]
            out[s:e] = scores[: e - s]
        return out

    def _top(
        self,
        scores: np.ndarray,
        seen: np.ndarray | None,
        k: int,
        ids: np.ndarray | None = None,
        own: bool = False,
    ) -> tuple[list[Any], list[float]]:
        """The ``k`` best of ``scores`` (``seen`` excluded) as ids (``ids``: of each column;
        None: the catalogue's items) and scores. ``own``: the caller's ``scores`` may be
        changed (the seen items set to -inf) instead of copied first."""
        if not own:  # float32 stays float32: the same order, 2x less
            scores = np.array(scores, copy=True)
        if seen is not None and len(seen):
            scores[seen] = -np.inf
        n = len(scores)
        k = min(k, n)
        kth = np.partition(scores, n - k)[n - k] if k else -np.inf
        if not np.isfinite(kth):  # fewer than k rankable items (seen, or not finite): count them
            k = min(k, int(np.isfinite(scores).sum()))
            if k == 0:
                return [], []
            kth = np.partition(scores, n - k)[n - k]
        # every item scoring at least the k-th best (all of a tie), then by score, ties by id
        cand = np.flatnonzero(scores >= kth)
        cand = cand[np.lexsort((cand, -scores[cand]))][:k]
        return (self.item_ids if ids is None else ids)[cand].tolist(), scores[cand].tolist()

    def ranked(
        self,
        users: Sequence[int],
        histories: Sequence[np.ndarray],
        ks: Sequence[int],
        seen: Sequence[np.ndarray | None],
    ) -> list[tuple[list[Any], list[float]]]:
        """The top ``ks[r]`` catalogue items (ids, scores) of each internal user (-1: a history
        alone) with ``histories``, ``seen[r]`` excluded (None: nothing), as :meth:`_top` ranks
        :meth:`score`'s rows. Fewer than :data:`GEMV_ROWS` queries of a model with a screen
        (:meth:`_screen`) are ranked through it: the same items from a quarter of the bytes."""
        screen = self._screen() if 0 < len(users) < GEMV_ROWS else None
        if screen is None:
            scores = self.score(users, histories)  # a new array: each row is changed by its top
            rows = zip(scores, seen, ks, strict=True)
            return [self._top(row, s, k, own=True) for row, s, k in rows]
        histories = [np.asarray(h, dtype=np.int64)[-self.length :] for h in histories]
        q = self._query_vectors(users, histories)  # (n, d)
        out = []
        for r, (k, s) in enumerate(zip(ks, seen, strict=True)):
            hit = screen.top(q[r], k, s)
            if hit is None:  # not certified cheaply: the whole product
                row = np.matmul(q[r], self._dot)
                out.append(self._top(row, s, k, own=True))
            else:  # candidates, ascending: ties stay ordered by item index
                cand, exact = hit
                out.append(self._top(exact, None, k, self.item_ids[cand], own=True))
        return out

    def _popular(self, exclude: np.ndarray | None, k: int) -> dict[str, Any]:
        items, scores = self._top(self.item_counts.astype(np.float64), exclude, k, own=True)
        return {"items": items, "scores": scores, "fallback": "popular"}

    def recommend(
        self,
        users: Sequence[Any] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        fallback: str | None = None,
        *,
        history: Sequence[Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
        new_items: Mapping[Any, Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Top-``k`` items for each external user id: ``[{"user", "items", "scores"}, ...]``.

        ``exclude_seen`` drops items the user interacted with in the training data (train +
        validation + test). Unknown users raise :class:`UnknownIdError` unless
        ``fallback="popular"`` (the most popular items).

        A new customer, instead of ``users``: ``history`` (external item ids, oldest first: for
        models that score a history, SASRec, Mult-VAE, ...) and/or ``attributes`` (user
        attribute → value(s): for models trained with user features); the answer is one row
        with ``"user": None``. A model that scores from attributes uses the history only to
        leave its items out. A model that can do neither raises :class:`RecsysError` naming
        it, unless ``fallback="popular"``.

        ``new_items``: products not in the catalogue, ``{id: attribute dict}``, ranked with the
        catalogue's items (models trained with item features; their ids then appear in
        ``items``).

        >>> art.recommend([42], k=5, new_items={"sku-9": {"genre": ["Drama"]}})  # doctest: +SKIP
        >>> art.recommend(history=["7", "31"], k=5)                               # doctest: +SKIP
        """
        check_k(k)
        _check_fallback(fallback)
        if users is None:
            if history is None and attributes is None:
                raise RecsysError(
                    "give users=[...], or a new customer's history=[...] and/or attributes={...}"
                )
            row = self._recommend_new(history, attributes, k, exclude_seen, fallback, new_items)
            return [{"user": None, **row}]
        if history is not None or attributes is not None:
            raise RecsysError("give users, or a new customer's history/attributes, not both")
        users = list(users)
        idx = self.user_index(users, allow_unknown=fallback == "popular")
        known = [i for i in idx if i is not None]
        hists = [self.history(i) for i in known]
        seen = [h if exclude_seen else None for h in hists]
        if new_items and known:
            scores = self.score(known, hists)
            scores, ids = self._with_new_items(scores, self._user_vectors(known, hists), new_items)
            rows = [self._top(r, s, k, ids, own=True) for r, s in zip(scores, seen, strict=True)]
        else:
            rows = self.ranked(known, hists, [k] * len(known), seen) if known else []
        out, j = [], 0
        for u, i in zip(users, idx, strict=False):
            if i is None:
                out.append({"user": u, **self._popular(None, k)})
                continue
            items, s = rows[j]
            j += 1
            out.append({"user": u, "items": items, "scores": s})
        return out

    def _recommend_new(
        self,
        history: Sequence[Any] | None,
        attributes: Mapping[str, Any] | None,
        k: int,
        exclude_seen: bool,
        fallback: str | None,
        new_items: Mapping[Any, Mapping[str, Any]] | None,
    ) -> dict[str, Any]:
        """``{"items", "scores"}`` for a customer the artifact does not know."""
        items = [] if history is None else list(history)
        idx = self.item_index(items, allow_unknown=fallback == "popular")
        hist = np.array([i for i in idx if i is not None], dtype=np.int64)
        seen = hist if exclude_seen else None
        if attributes is not None:
            why = self.user_attributes_refused()
            if why is not None:
                if fallback == "popular":
                    return self._popular(hist, k)
                raise RecsysError(why)
            q, table = self._new_user(attributes)
            scores = self._pair(q, table).numpy()
        else:
            if not self.supports_history or len(hist) == 0:
                if fallback == "popular":
                    return self._popular(hist, k)
                if len(hist) == 0:
                    raise RecsysError("the history is empty; give at least one known item")
                raise RecsysError(
                    f"{self.meta['model']['_target_']} scores known users only (its scores depend "
                    "on the user id, not only on the history); use recommend(users=...)"
                    + (" or attributes=..." if self.features and self.features.user else "")
                )
            if not new_items:
                top, s = self.ranked([-1], [hist], [k], [seen])[0]
                return {"items": top, "scores": s}
            scores = self.score([-1], [hist])
            q = self._user_vectors([-1], [hist])
        scores, ids = self._with_new_items(scores, q, new_items)
        top, s = self._top(scores[0], seen, k, ids, own=True)  # scores: computed here
        return {"items": top, "scores": s}

    def recommend_history(
        self,
        items: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        fallback: str | None = None,
    ) -> dict[str, Any]:
        """Top-``k`` items for an anonymous history (external item ids, oldest first):
        ``{"items_in", "items", "scores"}`` (as ``recommend(history=items)``).

        Models whose scores depend on the user id (MF, NCF) cannot score a history alone: they
        raise :class:`RecsysError` unless ``fallback="popular"``.
        """
        check_k(k)
        _check_fallback(fallback)
        row = self._recommend_new(list(items), None, k, exclude_seen, fallback, None)
        return {"items_in": list(items), **row}


def _check_fallback(fallback: str | None) -> None:
    if fallback not in (None, "popular"):
        raise RecsysError(f"fallback must be None or 'popular', got {fallback!r}")


def load(
    directory: str | Path,
    backend: str = "auto",
    trust: Iterable[str] | str | None = None,
    trace: bool = True,
    screen: bool = True,
) -> LoadedRecommender:
    """Load an artifact written by ``recsys-export``: digest, signature (with
    ``$RECSYS_ARTIFACT_KEY`` set) and checksums verified; see :class:`LoadedRecommender` for
    ``backend`` (``auto``: nothing from the file runs as code) and ``trust``. ``trace=False``
    keeps the eager encoder for histories (:mod:`recsys.serving.history`; for comparisons);
    ``screen=False`` ranks by the whole float32 product (:mod:`recsys.serving.screen`).

    >>> rec = recsys.load("artifacts/mf")                       # doctest: +SKIP
    >>> rec.recommend(users=[42], k=10)[0]["items"]              # doctest: +SKIP
    """
    return LoadedRecommender(directory, backend=backend, trust=trust, trace=trace, screen=screen)
