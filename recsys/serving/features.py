"""Attributes in artifacts: ``features.json``, and scoring new products and new customers.

An artifact of a model that uses attributes (``model.features``) holds ``features.json``: the
fields the model uses, per entity, as plain values — name, kind, vocabulary (a categorical
value's code is its position + 1), width, and a numeric field's training mean and standard
deviation::

    {"format": "recsys-features", "version": 1,
     "item": [{"name": "genre", "kind": "categorical", "vocab": ["Action", ...], "width": 3,
               "mean": 0.0, "std": 1.0}, ...] | null,
     "user": [...] | null}

It names no user and no item: the attribute codes of the catalogue's items and of the known
users are buffers in ``weights.pt``, addressed by internal id only (so a pseudonymised artifact
stays pseudonymised, and an opted-out user, removed before anything was encoded, has no row).
The model is rebuilt from it (``build_model(..., feature_schema=...)``) and its buffers load
from the weights. The file is covered by the manifest's checksums and signature like every
other, and checked key by key when read: anything else is refused with one line naming the key.

:class:`NewEntities` is what :class:`~recsys.serving.artifact.LoadedRecommender` gains from it:
a new product is scored from its attributes (``score_new_items``, ``recommend(new_items=...)``,
``top_users``, ``similar``), and a new customer from a short history and/or attributes
(``recommend(history=..., attributes=...)``). An attribute dict is encoded as
:meth:`~recsys.data.features.FeatureTable.encode_rows` does, with the training vocabularies: a
value outside a vocabulary is unknown; a field the artifact does not have is an error naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.features import ENTITIES, KINDS, FeatureTable, Field
from recsys.errors import CheckpointError, RecsysError

log = logging.getLogger("recsys")

FILE = "features.json"
FORMAT = "recsys-features"
VERSION = 1
FIELD_KEYS = ("name", "kind", "vocab", "width", "mean", "std")
_ATOMS = (str, int, float)  # what one categorical value may be in an attribute dict


@dataclass(frozen=True)
class ArtifactFeatures:
    """The fields an artifact's model uses: ``item`` / ``user``, each a tuple of
    :class:`~recsys.data.features.Field` (empty when the model uses none of that entity's)."""

    item: tuple[Field, ...] = ()
    user: tuple[Field, ...] = ()

    def schema(self) -> dict[str, Any]:
        """``{"item": [field dicts] | None, "user": ...}``: what ``build_model`` takes."""
        return {e: [f.to_dict() for f in getattr(self, e)] or None for e in ENTITIES}

    def names(self, entity: str) -> list[str]:
        return [f.name for f in getattr(self, entity)]

    def encode(self, entity: str, rows: Sequence[Any], what: str) -> FeatureTable:
        """A :class:`FeatureTable` of ``rows`` (attribute dicts) with the training vocabularies
        of ``entity``; ``what`` names the argument in the one-line error of a bad row."""
        fields = getattr(self, entity)
        for i, row in enumerate(rows):
            where = what if len(rows) == 1 else f"{what}[{i}]"
            _check_row(row, fields, entity, where)
        table = FeatureTable(entity, fields, {}, {}, np.zeros(0, dtype=bool))
        return table.encode_rows([dict(r) for r in rows])


def _check_row(row: Any, fields: Sequence[Field], entity: str, where: str) -> None:
    if not isinstance(row, Mapping):
        raise RecsysError(
            f"{where}: give a mapping of {entity} attribute → value(s), got {type(row).__name__}"
        )
    kinds = {f.name: f.kind for f in fields}
    for name, value in row.items():
        if name not in kinds:
            have = ", ".join(kinds) or "none"
            raise RecsysError(f"{where}: unknown {entity} attribute {name!r} (fields: {have})")
        if value is None:
            continue
        if kinds[name] == "numeric":
            try:
                ok = not isinstance(value, bool) and math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise RecsysError(f"{where}: {name} must be a finite number, got {value!r}")
            continue
        values = [value] if isinstance(value, _ATOMS) else value
        if (
            isinstance(value, bool)
            or not isinstance(values, list | tuple)
            or any(isinstance(v, bool) or not isinstance(v, _ATOMS) for v in values)
        ):
            raise RecsysError(
                f"{where}: {name} must be a value or a list of values (text or numbers), "
                f"got {value!r}"[:200]
            )


def record(model: Any) -> dict[str, Any] | None:
    """The content of ``features.json`` for ``model`` (the fields it uses, as the checkpoint's
    schema gives them), or None for a model that uses no attributes."""
    feats = model.feats
    if not feats.active:
        return None
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    for entity in ENTITIES:
        fields = [Field.from_dict(f).to_dict() for f in getattr(feats, entity)]
        out[entity] = fields or None
    return out


def write(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")


def read(path: Path) -> ArtifactFeatures:
    """The fields of ``features.json`` at ``path``, checked key by key (one
    :class:`CheckpointError` line naming the file and the key)."""

    def bad(key: str, what: str, value: Any = ...) -> CheckpointError:
        return _bad(path, key, what, value)

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); re-export the artifact") from None
    keys = ("format", "version", *ENTITIES)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a recsys feature schema (no format: {FORMAT})")
    for key in data:
        if key not in keys:
            raise CheckpointError(f"{path}: unknown key {key!r} (expected {', '.join(keys)})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("version", "a positive integer", version)
    if version > VERSION:
        raise CheckpointError(
            f"{path}: feature schema version {version} is newer than this recsys reads "
            f"({VERSION}); upgrade recsys"
        )
    out: dict[str, tuple[Field, ...]] = {}
    for entity in ENTITIES:
        if entity not in data:
            raise CheckpointError(f"{path}: {entity} is missing")
        fields = data[entity]
        if fields is None:
            out[entity] = ()
            continue
        if not isinstance(fields, list) or not fields:
            raise bad(entity, "null or a non-empty list of fields", fields)
        out[entity] = tuple(_field(f, f"{entity}[{i}]", path) for i, f in enumerate(fields))
        names = [f.name for f in out[entity]]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise CheckpointError(f"{path}: {entity}: field {dup!r} is given twice")
    if not out["item"] and not out["user"]:
        raise CheckpointError(f"{path}: item and user are both null (no fields)")
    return ArtifactFeatures(**out)


def _bad(path: Path, key: str, what: str, value: Any = ...) -> CheckpointError:
    got = "" if value is ... else f", got {value!r}"[:120]
    return CheckpointError(f"{path}: {key} must be {what}{got}")


def _field(d: Any, key: str, path: Path) -> Field:
    def bad(k: str, what: str, value: Any = ...) -> CheckpointError:
        return _bad(path, k, what, value)

    if not isinstance(d, dict):
        raise bad(key, f"a mapping with {', '.join(FIELD_KEYS)}", d)
    for k in d:
        if k not in FIELD_KEYS:
            raise CheckpointError(
                f"{path}: {key}: unknown key {k!r} (expected {', '.join(FIELD_KEYS)})"
            )
    for k in FIELD_KEYS:
        if k not in d:
            raise CheckpointError(f"{path}: {key}.{k} is missing")
    name, kind, vocab, width = d["name"], d["kind"], d["vocab"], d["width"]
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{key}.name", "a non-empty string", name)
    if kind not in KINDS:
        raise bad(f"{key}.kind", f"one of {', '.join(KINDS)}", kind)
    if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
        raise bad(f"{key}.vocab", "a list of strings", vocab)
    if len(set(vocab)) != len(vocab):
        raise bad(f"{key}.vocab", "distinct values")
    if kind == "numeric" and vocab:
        raise bad(f"{key}.vocab", "empty for a numeric field", vocab)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise bad(f"{key}.width", "a positive integer", width)
    for k in ("mean", "std"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise bad(f"{key}.{k}", "a finite number", v)
    if d["std"] <= 0:
        raise bad(f"{key}.std", "positive", d["std"])
    return Field(name, kind, tuple(vocab), width, float(d["mean"]), float(d["std"]))


def item_vectors(model: Any):
    """(I, d) the model's item vectors in its scoring space (ids and attributes), or None for a
    model without any (``Recommender.item_vectors``)."""
    try:
        return model.item_vectors()
    except NotImplementedError:
        return None


class NewEntities:
    """New products and new customers, for :class:`~recsys.serving.artifact.LoadedRecommender`.

    A new product is scored as the model scores a user vector against an item vector (its
    ``score_vectors`` where it has one, NCF's MLP; else the dot product, MF and the sequence
    models), with the item vector from its attributes alone, as a catalogue item without
    training events is represented: so its score is comparable with the catalogue's. That the
    model's ``score`` is this function of its ``user_representation`` and item vectors is checked
    on real users before the first answer; a model where it is not is refused with one line. A
    new customer given by attributes is scored the same way, from ``new_user_vectors``.
    """

    features: ArtifactFeatures | None

    # -- the model and its vectors ----------------------------------------------------------
    def _name(self) -> str:
        return str(self.meta["model"]["_target_"]).rsplit(".", 1)[-1]

    def _eager(self):
        """The eager model (built on first use for the other backends: no code from the file)."""
        if getattr(self, "model", None) is None:
            self.model = self._eager_model()
        return self.model

    def _item_table(self):
        """(I, d) catalogue item vectors, checked to reproduce ``score`` on real users."""
        if getattr(self, "_items_d", None) is None:
            torch = self._torch
            model = self._eager()
            with torch.no_grad():
                vectors = item_vectors(model)
            if vectors is None or not model.represents_users:
                raise RecsysError(
                    f"{self._name()} has no user and item vectors that make its score: it cannot "
                    "score new items or customers from attributes"
                )
            self._items_d = vectors.detach().float()
            self._check_dot()
        return self._items_d

    def _check_dot(self) -> None:
        """Refuse models whose scores are not ``user_representation · item vectors``."""
        lengths = np.diff(self.indptr)
        users = np.flatnonzero(lengths > 0)[:4].tolist() or [0]
        torch = self._torch
        from recsys.data.batches import UserBatch

        batch = UserBatch.from_lists(users, [self.history(u).tolist() for u in users])
        with torch.no_grad():
            want = self.model.score(batch).float()
            got = self._pair(self.model.user_representation(batch).float(), self._items_d)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            self._items_d = None
            raise RecsysError(
                f"{self._name()}: its scores are not a function of its user and item vectors, so "
                "a new item's or a new customer's score would not be comparable: not supported"
            )

    def _dot_table(self) -> np.ndarray | None:
        """(d, I) float32, C-contiguous: the item vectors of a model whose scores are exactly
        ``user_representation · item vectors`` (checked once on real users), for
        :meth:`~recsys.serving.artifact.LoadedRecommender.score`; None for other models. A
        pre-transposed table makes one user's scores 2-4x faster than torch's ``u @ items.T``
        (benchmarks/serving.md)."""
        if getattr(self, "_dot", None) is None:
            self._dot = False
            model = self._eager()
            if model.represents_users:
                try:
                    items = self._item_table()
                except RecsysError:
                    return None
                users = np.flatnonzero(np.diff(self.indptr) > 0)[:4].tolist() or [0]
                q = self._user_vectors(users, [self.history(u) for u in users])
                if self._torch.allclose(self._pair(q, items), q @ items.T, rtol=1e-5, atol=1e-6):
                    self._dot = np.ascontiguousarray(items.numpy().T)
        return None if self._dot is False else self._dot

    def _dot_users(self) -> np.ndarray | None:
        """(U, d) float32 vectors of every known user, for a dot-product model whose user vector
        depends on the user id alone (not ``supports_history``: MF, iALS, LightGCN); None
        otherwise. Computed once: a request then looks its user up instead of calling the model."""
        if getattr(self, "_dot_u", None) is None:
            self._dot_u = False
            if self._dot_table() is not None and not self.supports_history and self.num_users:
                users = list(range(self.num_users))
                q = self._user_vectors(users, [self.history(u) for u in users])
                self._dot_u = np.ascontiguousarray(q.numpy(), dtype=np.float32)
        return None if self._dot_u is False else self._dot_u

    def _query_vectors(self, users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) float32 query vectors of a dot-product model (:meth:`_dot_table`): looked up in
        :meth:`_dot_users` for known users where the model allows it, else from the model."""
        static = self._dot_users()
        if static is not None and len(users) and min(users) >= 0:
            return static[list(users)]
        return self._user_vectors(users, histories).numpy()

    def _pair(self, users, items):
        """(n, m) scores of user vectors (n, d) against item vectors (m, d), as the model
        scores them."""
        with self._torch.no_grad():
            out = self.model.score_vectors(users, items)
        return out.detach().float()

    def _new_items(self, items: Sequence[Any], what: str):
        """(m, d) vectors of new products given by attribute dicts."""
        if self.features is None or not self.features.item:
            raise RecsysError(
                f"{self._name()} uses no item attributes (exported without item features): a new "
                "item cannot be scored; train it with model.features.item"
            )
        model = self._eager()
        if not model.scores_new_items:
            raise RecsysError(f"{self._name()} cannot represent a new item from its attributes")
        self._item_table()
        if not len(items):
            raise RecsysError(f"{what}: give at least one item's attributes")
        table = self.features.encode("item", list(items), what)
        with self._torch.no_grad():
            return model.new_item_vectors(table).detach().float()

    def user_attributes_refused(self) -> str | None:
        """Why this artifact cannot score a new customer from attributes (None: it can)."""
        if self.features is None or not self.features.user:
            return (
                f"{self._name()} takes no customer attributes (exported without user features)"
                + ("; give the customer's history" if self.supports_history else "")
            )
        if not self._eager().scores_new_users:
            return f"{self._name()} cannot represent a new customer from attributes"
        return None

    def _new_user(self, attributes: Any):
        """(1, d) the vector of a new customer given by attributes, and the (I, d) item table."""
        why = self.user_attributes_refused()
        if why is not None:
            raise RecsysError(why)
        items = self._item_table()
        table = self.features.encode("user", [attributes], "attributes")
        with self._torch.no_grad():
            return self.model.new_user_vectors(table).detach().float(), items

    def _user_vectors(self, users: Sequence[int], histories: Sequence[np.ndarray]):
        """(n, d) vectors of internal users (-1: a history of no known user)."""
        from recsys.data.batches import UserBatch

        self._item_table()
        torch, out = self._torch, []
        fast = self._history_encoder()
        if fast is not None and len(users):  # one call per 256 rows
            for s in range(0, len(users), 256):
                out.append(torch.from_numpy(fast(histories[s : s + 256])))
            return torch.cat(out) if len(out) != 1 else out[0]
        with torch.inference_mode():  # less per-op overhead than no_grad: the request path
            for s in range(0, len(users), 256):
                b = UserBatch.from_lists(
                    list(users[s : s + 256]),
                    [np.asarray(h)[-self.length :].tolist() for h in histories[s : s + 256]],
                )
                out.append(self.model.user_representation(b).detach().float())
        return torch.cat(out) if out else torch.zeros(0, self._items_d.shape[1])

    def _history_encoder(self):
        """The fast history encoder (:func:`~recsys.serving.history.history_encoder`: the
        closed form of a one-block model, else a traced graph) for models it reproduces, built
        and checked on real users at first use; None for the others (``history_path`` says
        which path scores histories, and why)."""
        if getattr(self, "_histories", None) is None:
            from recsys.serving.history import history_encoder

            self._histories = False
            model = self._eager()
            self.history_path = "eager (not a history model)"
            if self.supports_history and getattr(model, "scores_history", False):
                lengths = np.diff(self.indptr)
                users = np.flatnonzero(lengths > 0)
                by_length = users[np.argsort(lengths[users], kind="stable")]
                pick = (
                    np.unique(
                        np.r_[
                            by_length[:4],
                            by_length[-4:],
                            by_length[np.linspace(0, len(by_length) - 1, 16).astype(int)],
                        ]
                    )
                    if len(by_length)
                    else by_length
                )
                probes = [(int(u), self.history(int(u))[-self.length :]) for u in pick]
                encoder, path = history_encoder(model, probes)
                self.history_path = path if encoder is not None else f"eager ({path})"
                if encoder is not None:
                    self._histories = encoder
                else:
                    log.info("%s: history vectors stay eager: %s", self._name(), path)
        return None if self._histories is False else self._histories

    def _screen(self):
        """The int8 screen of the item table (:mod:`recsys.serving.screen`: exact top-k from
        a quarter of the bytes) for an eager dot-product model with a large catalogue, built
        at first use; None otherwise (``scan_path`` says which path ranks, and why)."""
        if getattr(self, "_scan", None) is None:
            from recsys.serving import screen as screens

            self._scan = False
            if self.backend != "eager" or self._dot_table() is None:
                self.scan_path = "float32 product (not an eager dot-product model)"
            elif self._items_d.numel() < screens.SCREEN_MIN_ELEMENTS:
                self.scan_path = "float32 product (a catalogue small enough for the cache)"
            elif screens.kernels() is None:
                self.scan_path = f"float32 product ({screens.unavailable})"
            else:
                screen = screens.build_screen(self._items_d.numpy())
                if screen is None:
                    self.scan_path = "float32 product (the item table is not finite)"
                else:
                    self._scan = screen
                    self.scan_path = "int8 screen, exact"
        return None if self._scan is False else self._scan

    # -- public ----------------------------------------------------------------------------
    def score_new_items(
        self, items: Sequence[Mapping[str, Any]], users: Sequence[Any]
    ) -> np.ndarray:
        """(len(users), len(items)) float32 scores of new products for known users.

        ``items``: one attribute dict per product (``{"genre": ["Drama", "War"], "year": "1998"}``;
        a value outside the training vocabulary is unknown). The scores are on the scale of the
        catalogue's (``score``): a new item whose attributes equal those of a catalogue item
        without training events scores as that item does. Unknown users raise
        :class:`~recsys.serving.artifact.UnknownIdError`.
        """
        vectors = self._new_items(items, "items")
        idx = self.user_index(list(users))
        q = self._user_vectors(idx, [self.history(i) for i in idx])
        return self._pair(q, vectors).numpy()

    def top_users(self, attributes: Mapping[str, Any], k: int = 10) -> dict[str, Any]:
        """The ``k`` known users who score a new product (given by ``attributes``) highest:
        ``{"users": [...], "scores": [...]}`` (a launch's audience); ties by internal id."""
        check_k(k)
        vector = self._new_items([attributes], "attributes")[0]
        if getattr(self, "_users_d", None) is None:
            users = list(range(self.num_users))
            self._users_d = self._user_vectors(users, [self.history(u) for u in users])
        scores = self._pair(self._users_d, vector[None])[:, 0].double().numpy()
        top, s = self._top(scores, None, k, ids=self.user_ids)
        return {"users": top, "scores": s}

    def similar(self, attributes: Mapping[str, Any], k: int = 10) -> dict[str, Any]:
        """The ``k`` catalogue items nearest to a new product given by ``attributes``: cosine of
        its vector with the model's item vectors (ids and attributes), ``{"items", "scores"}``;
        catalogue items with the same attributes and no training events come first (cosine 1)."""
        check_k(k)
        vector = self._new_items([attributes], "attributes")[0].double()
        table = self._item_table().double()
        norms = table.norm(dim=1) * vector.norm()
        sims = (table @ vector) / _nonzero(norms)
        return dict(zip(("items", "scores"), self._top(sims.numpy(), None, k), strict=True))

    def _with_new_items(
        self, scores: np.ndarray, q, new_items: Mapping[Any, Mapping[str, Any]] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``scores`` (n, I) with the new products' scores appended as columns (q: (n, d) the
        rows' vectors), and the ids of the columns (None: the catalogue's)."""
        if not new_items:
            return scores, None
        if not isinstance(new_items, Mapping):
            raise RecsysError("new_items: give a mapping of new item id → attribute dict")
        names = list(new_items)
        clash = [
            n for n, i in zip(names, self.item_index(names, True), strict=True) if i is not None
        ]
        if clash:
            raise RecsysError(f"new_items: {clash[0]!r} is the id of a catalogue item")
        extra = self._pair(q, self._new_items(list(new_items.values()), "new_items")).numpy()
        ids = np.array([*self.item_ids.tolist(), *names], dtype=object)
        return np.concatenate([scores, extra], 1), ids


def check_k(k: int) -> None:
    """``k`` (how many answers) is a positive integer, or one line saying it is not."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise RecsysError(f"k must be a positive integer, got {k!r}")


def _nonzero(x):
    """``x`` with its zeros replaced by ones (a zero vector's cosine is 0, not NaN)."""
    return x.where(x > 0, x.new_ones(()))
