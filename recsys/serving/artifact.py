"""Exported artifacts: the file layout, and :func:`load`, the serving-side loader.

An artifact directory (written by ``recsys-export``) holds:

- ``artifact.json`` — format version, model config and sizes, scorer shapes, and the SHA-256 and
  size of every other file (a truncated or altered file is refused with its name);
- ``weights.pt`` — the model's ``state_dict`` (tensors only; ``torch.load(weights_only=True)``);
- ``config.yaml`` — the run's resolved config; ``metrics.json``, ``manifest.json`` of the run;
- ``ids.npz`` — ``user_ids`` and ``item_ids``: the external id of each internal id;
- ``history.npz`` — every known user's items in time order (CSR ``indptr``/``indices``, train +
  validation + test), used as the model input and for ``exclude_seen``; ``item_counts`` for the
  popularity fallback;
- ``embeddings.npz`` — user/item embedding tables, for models that have them (ANN indexes);
- ``scorer.ts`` (TorchScript) and ``scorer.onnx`` — code-free scorers, where the model traces
  cleanly. Both take fixed shapes: ``users`` (R,) int64, ``items`` (N,) int64 and ``offsets``
  (R + 1,) int64 (row r's history is ``items[offsets[r]:offsets[r+1]]``; user id -1 for a
  history of no known user) and return (R, num_items) float32 scores. Callers pack up to R - 1
  real rows and give the last row the unused history slots (its scores are discarded); this
  loader does that.

This module imports neither Hydra nor Lightning: a service needs torch and numpy only (and
onnxruntime for the ONNX backend).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import CheckpointError, RecsysError
from recsys.trust import Trust

FORMAT = "recsys-artifact"
VERSION = 1
MANIFEST = "artifact.json"


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


def read_manifest(directory: str | Path, verify: bool = True) -> dict[str, Any]:
    """``artifact.json`` of ``directory``, with every listed file checked against its checksum."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such artifact directory")
    if not path.is_file():
        raise CheckpointError(
            f"{d}: not an artifact directory (no {MANIFEST}; create one with recsys-export)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted or truncated ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a recsys artifact manifest")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path}: artifact version {meta.get('version')} is newer than this recsys ({VERSION})"
        )
    if verify:
        for name, info in meta.get("files", {}).items():
            f = d / name
            if not f.is_file():
                raise CheckpointError(f"{f}: missing from the artifact")
            size = f.stat().st_size
            if size != info["bytes"]:
                raise CheckpointError(
                    f"{f}: corrupted or truncated ({size} bytes, expected {info['bytes']}); re-export the artifact"
                )
            if sha256(f) != info["sha256"]:
                raise CheckpointError(f"{f}: corrupted (checksum mismatch); re-export the artifact")
    return meta


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - truncated zip, wrong format
        raise CheckpointError(f"{path}: not readable ({e})") from None


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
        _check_k(k)
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
            top, scores = self._top(sims, None, k)
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
            table = _npz(self.dir / "embeddings.npz")["item"].astype(np.float64)
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
    import hmac

    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, str(user).encode(), hashlib.sha256).hexdigest()


class LoadedRecommender(_SimilarItems):
    """Top-k recommendations from an exported artifact, with external ids in and out.

    Backends: ``"torchscript"`` (the traced scorer; no model code needed), ``"onnx"``
    (onnxruntime), ``"eager"`` (the model class rebuilt from ``weights.pt``), ``"auto"``
    (TorchScript when the artifact has it, else eager).
    """

    def __init__(
        self,
        directory: str | Path,
        backend: str = "auto",
        verify: bool = True,
        trust: Iterable[str] | str | None = None,
    ):
        import torch

        self.dir = Path(directory)
        # what artifact.json may name for construction (recsys.trust): recsys' own models and
        # the packages the caller names (plus $RECSYS_TRUSTED_PACKAGES), never its own choice
        self.trust = Trust.for_file(self.dir / MANIFEST, trust)
        self.meta = read_manifest(self.dir, verify=verify)
        ids = _npz(self.dir / "ids.npz")
        self.user_ids, self.item_ids = ids["user_ids"], ids["item_ids"]
        self._user_index = {
            _id_key(u, self.user_ids.dtype): i for i, u in enumerate(self.user_ids.tolist())
        }
        self._item_index = {
            _id_key(v, self.item_ids.dtype): i for i, v in enumerate(self.item_ids.tolist())
        }
        hist = _npz(self.dir / "history.npz")
        self.indptr, self.indices = hist["indptr"], hist["indices"]
        self.item_counts = hist["item_counts"]
        self.num_users, self.num_items = int(self.meta["num_users"]), int(self.meta["num_items"])
        self.rows, self.length = (
            int(self.meta["scorer"]["rows"]),
            int(self.meta["scorer"]["length"]),
        )
        self.supports_history = bool(self.meta.get("supports_history"))
        if backend == "auto":
            backend = "torchscript" if self.meta["scorer"].get("torchscript") else "eager"
        self.backend = backend
        self._torch = torch
        if backend == "torchscript":
            name = self.meta["scorer"].get("torchscript")
            if not name:
                raise CheckpointError(
                    f"{self.dir}: no TorchScript scorer ({self.meta['scorer'].get('torchscript_error')})"
                )
            try:
                self._ts = torch.jit.load(str(self.dir / name), map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(
                    f"{self.dir / name}: not a loadable TorchScript file ({e})"
                ) from None
        elif backend == "onnx":
            name = self.meta["scorer"].get("onnx")
            if not name:
                raise CheckpointError(
                    f"{self.dir}: no ONNX scorer ({self.meta['scorer'].get('onnx_error')})"
                )
            import onnxruntime as ort

            self._ort = ort.InferenceSession(
                str(self.dir / name), providers=["CPUExecutionProvider"]
            )
            self._ort_inputs = {i.name for i in self._ort.get_inputs()}
        elif backend == "eager":
            self.model = self._eager_model()
        else:
            raise RecsysError(f"backend must be auto, torchscript, onnx or eager, got {backend!r}")

    def _eager_model(self):
        from recsys.models.base import build_model

        torch = self._torch
        model = build_model(self.meta["model"], self.num_users, self.num_items, self.trust)
        path = self.dir / "weights.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"{path}: weights not loadable into {self.meta['model']['_target_']} ({e})"
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
        if self.backend == "eager":
            from recsys.data.batches import UserBatch

            with self._torch.no_grad():
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
        self, scores: np.ndarray, seen: np.ndarray | None, k: int
    ) -> tuple[list[Any], list[float]]:
        scores = scores.astype(np.float64)
        if seen is not None and len(seen):
            scores[seen] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k == 0:
            return [], []
        # every item scoring at least the k-th best (all of a tie), then by score, ties by id
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        cand = np.flatnonzero(scores >= kth)
        cand = cand[np.lexsort((cand, -scores[cand]))][:k]
        return self.item_ids[cand].tolist(), scores[cand].tolist()

    def _popular(self, exclude: np.ndarray | None, k: int) -> dict[str, Any]:
        items, scores = self._top(self.item_counts.astype(np.float64), exclude, k)
        return {"items": items, "scores": scores, "fallback": "popular"}

    def recommend(
        self,
        users: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        fallback: str | None = None,
    ) -> list[dict[str, Any]]:
        """Top-``k`` items for each external user id: ``[{"user", "items", "scores"}, ...]``.

        ``exclude_seen`` drops items the user interacted with in the training data (train +
        validation + test). Unknown users raise :class:`UnknownIdError` unless
        ``fallback="popular"`` (the most popular items).
        """
        users = list(users)
        _check_k(k)
        _check_fallback(fallback)
        idx = self.user_index(users, allow_unknown=fallback == "popular")
        known = [i for i in idx if i is not None]
        scores = self.score(known, [self.history(i) for i in known]) if known else None
        out, j = [], 0
        for u, i in zip(users, idx, strict=False):
            if i is None:
                out.append({"user": u, **self._popular(None, k)})
                continue
            items, s = self._top(scores[j], self.history(i) if exclude_seen else None, k)
            j += 1
            out.append({"user": u, "items": items, "scores": s})
        return out

    def recommend_history(
        self,
        items: Sequence[Any],
        k: int = 10,
        exclude_seen: bool = True,
        fallback: str | None = None,
    ) -> dict[str, Any]:
        """Top-``k`` items for an anonymous history (external item ids, oldest first).

        Models whose scores depend on the user id (MF, NCF) cannot score a history alone: they
        raise :class:`RecsysError` unless ``fallback="popular"``.
        """
        _check_k(k)
        _check_fallback(fallback)
        idx = self.item_index(items, allow_unknown=fallback == "popular")
        hist = np.array([i for i in idx if i is not None], dtype=np.int64)
        if not self.supports_history or len(hist) == 0:
            if fallback == "popular":
                return {"items_in": list(items), **self._popular(hist, k)}
            if len(hist) == 0:
                raise RecsysError("the history is empty; give at least one known item")
            raise RecsysError(
                f"{self.meta['model']['_target_']} scores known users only (its scores depend on the "
                "user id, not only on the history); use recommend(users=...)"
            )
        scores = self.score([-1], [hist])[0]
        top, s = self._top(scores, hist if exclude_seen else None, k)
        return {"items_in": list(items), "items": top, "scores": s}


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise RecsysError(f"k must be a positive integer, got {k!r}")


def _check_fallback(fallback: str | None) -> None:
    if fallback not in (None, "popular"):
        raise RecsysError(f"fallback must be None or 'popular', got {fallback!r}")


def load(
    directory: str | Path, backend: str = "auto", trust: Iterable[str] | str | None = None
) -> LoadedRecommender:
    """Load an artifact written by ``recsys-export`` (checksums verified).

    >>> rec = recsys.load("artifacts/mf")                       # doctest: +SKIP
    >>> rec.recommend(users=[42], k=10)[0]["items"]              # doctest: +SKIP
    """
    return LoadedRecommender(directory, backend=backend, trust=trust)
