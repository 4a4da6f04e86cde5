"""Attribute tables of items and users: what the catalogue and the customer file say beyond ids.

A source of feature files (:mod:`recsys.data.sources.features`) returns :class:`RawFeatures`:
external ids and, per field, the values as written (strings for categorical fields, single or
multi-valued; floats for numeric fields, NaN where missing). :func:`encode` turns them into a
:class:`FeatureTable` over a split's id space, with every vocabulary and every numeric
normalisation taken from the training part only:

- a categorical field's vocabulary is the sorted set of values held by entities that occur in
  training; a value held only by entities absent from training (a cold item's new brand) is
  unknown, code 0, exactly like a value of a product added after the export;
- a numeric field is standardised with the mean and standard deviation over training entities
  that have a value; a missing value is 0 after standardisation (the training mean).

Codes are 1-based, 0 meaning "no value / unknown / padding", so models pool them with
``EmbeddingBag(padding_idx=0)``. A table has a row for every entity of the id space, in internal
id order; ``present`` says which entities had a row in the file.

Everything here is numpy and plain values; tensors are made on the model side
(:mod:`recsys.models.features`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError

KINDS = ("categorical", "numeric")
ENTITIES = ("item", "user")


@dataclass(frozen=True)
class RawFeatures:
    """Feature rows as read from a file, before encoding.

    Attributes:
        entity: ``"item"`` or ``"user"``.
        ids: (n,) external ids of the rows, of the same kind as the log's ids (int64 for the
            official formats with integer ids, an object array of ``str`` otherwise).
        categorical: long format, one row per (entity row, field, value): columns ``row``
            (int64 position in ``ids``), ``field`` (str), ``value`` (str). A multi-valued field
            has several rows for one entity row.
        numeric: field name → (n,) float64, NaN where the file has no value.
        source: the file(s) read, for messages.
    """

    entity: str
    ids: np.ndarray
    categorical: pd.DataFrame
    numeric: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    @property
    def fields(self) -> list[str]:
        cats = sorted(set(self.categorical["field"])) if len(self.categorical) else []
        return [*cats, *sorted(self.numeric)]

    def take(self, keep: np.ndarray) -> RawFeatures:
        """The rows where ``keep`` ((n,) bool) is True, renumbered (opt-out drops rows here,
        before anything is encoded)."""
        keep = np.asarray(keep, dtype=bool)
        new_row = np.cumsum(keep) - 1
        cat = self.categorical
        if len(cat):
            rows = cat["row"].to_numpy(np.int64)
            cat = cat[keep[rows]].assign(row=new_row[rows[keep[rows]]]).reset_index(drop=True)
        return RawFeatures(
            entity=self.entity,
            ids=self.ids[keep],
            categorical=cat,
            numeric={k: np.asarray(v)[keep] for k, v in self.numeric.items()},
            source=self.source,
        )


def merge_raw(*parts: RawFeatures) -> RawFeatures:
    """Several files about one entity as one table (MovieLens ``movies.csv`` + ``tags.csv``):
    rows of the same id are joined; a numeric field is NaN where its file has no row. A field
    named in two files is a :class:`DataError` (which file says what would be ambiguous)."""
    if len(parts) == 1:
        return parts[0]
    seen: dict[str, str] = {}
    for part in parts:
        for name in part.fields:
            if name in seen:
                raise DataError(f"feature field {name!r} is in both {seen[name]} and {part.source}")
            seen[name] = part.source
    ids = pd.unique(np.concatenate([np.asarray(p.ids, dtype=object) for p in parts]))
    if all(p.ids.dtype.kind in "iu" for p in parts):
        ids = ids.astype(np.int64)
    index = pd.Index(ids)
    cats, numeric = [], {}
    for part in parts:
        where = index.get_indexer(part.ids)
        if len(part.categorical):
            cat = part.categorical
            cats.append(cat.assign(row=where[cat["row"].to_numpy(np.int64)]))
        for name, v in part.numeric.items():
            col = np.full(len(ids), np.nan)
            col[where] = v
            numeric[name] = col
    categorical = (
        pd.concat(cats, ignore_index=True)
        if cats
        else pd.DataFrame({"row": np.empty(0, np.int64), "field": [], "value": []})
    )
    return RawFeatures(
        parts[0].entity, ids, categorical, numeric, " + ".join(p.source for p in parts)
    )


@dataclass(frozen=True)
class Field:
    """One encoded field: its kind and what was learned from training data."""

    name: str
    kind: str  # "categorical" | "numeric"
    vocab: tuple[str, ...] = ()  # categorical: value of code k is vocab[k - 1]
    width: int = 1  # categorical: most values one entity holds (columns of its code matrix)
    mean: float = 0.0  # numeric: training mean
    std: float = 1.0  # numeric: training standard deviation (1 when constant)

    @property
    def size(self) -> int:
        """Rows of an embedding table for this field: the vocabulary plus code 0."""
        return len(self.vocab) + 1 if self.kind == "categorical" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "vocab": list(self.vocab),
            "width": self.width,
            "mean": self.mean,
            "std": self.std,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Field:
        kind = str(d["kind"])
        if kind not in KINDS:
            raise DataError(f"feature field {d.get('name')!r}: kind must be one of {KINDS}")
        return Field(
            name=str(d["name"]),
            kind=kind,
            vocab=tuple(str(v) for v in d.get("vocab", ())),
            width=int(d.get("width", 1)),
            mean=float(d.get("mean", 0.0)),
            std=float(d.get("std", 1.0)),
        )


@dataclass(frozen=True)
class FeatureTable:
    """Encoded attributes of every entity (item or user) of one id space.

    Attributes:
        entity: ``"item"`` or ``"user"``.
        fields: the encoded fields, categorical ones first, each sorted by name.
        codes: categorical field name → (n, width) int64 codes, 1-based, 0 = none/unknown,
            each row's codes sorted ascending then zero-padded on the right.
        values: numeric field name → (n,) float32 standardised values, 0 where missing.
        present: (n,) bool, whether the entity had a row in the feature file.
    """

    entity: str
    fields: tuple[Field, ...]
    codes: Mapping[str, np.ndarray]
    values: Mapping[str, np.ndarray]
    present: np.ndarray

    def __len__(self) -> int:
        return len(self.present)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def select(self, names: Sequence[str] | None) -> FeatureTable:
        """The table restricted to ``names`` (None or ``"all"``: every field); an unknown name is
        a :class:`DataError` listing the fields there are."""
        if names is None or names == "all":
            return self
        missing = [n for n in names if n not in self.names]
        if missing:
            raise DataError(
                f"{self.entity} features: no field {', '.join(map(repr, missing))} "
                f"(fields: {', '.join(self.names) or 'none'})"
            )
        keep = tuple(f for f in self.fields if f.name in set(names))
        return FeatureTable(
            entity=self.entity,
            fields=keep,
            codes={f.name: self.codes[f.name] for f in keep if f.kind == "categorical"},
            values={f.name: self.values[f.name] for f in keep if f.kind == "numeric"},
            present=self.present,
        )

    def schema(self) -> list[dict[str, Any]]:
        """The fields as plain values (stored in checkpoints and artifacts)."""
        return [f.to_dict() for f in self.fields]

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> FeatureTable:
        """A table for new entities described by attribute dicts (``{"brand": "x", "tags": ["a",
        "b"], "price": 9.5}``), with this table's vocabularies and normalisation: a value outside
        a vocabulary is unknown (code 0); a missing field has no value. An attribute that is not
        a field of this table is a :class:`DataError` naming it."""
        n = len(rows)
        known = set(self.names)
        for r in rows:
            extra = sorted(set(r) - known)
            if extra:
                raise DataError(
                    f"{self.entity} attributes: unknown field {', '.join(map(repr, extra))} "
                    f"(fields: {', '.join(self.names) or 'none'})"
                )
        codes: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        for f in self.fields:
            if f.kind == "categorical":
                lookup = {v: k + 1 for k, v in enumerate(f.vocab)}
                per_row = []
                for r in rows:
                    v = r.get(f.name)
                    vals = [] if v is None else [v] if isinstance(v, str | int | float) else list(v)
                    per_row.append(sorted({lookup.get(str(x), 0) for x in vals} - {0}))
                width = max([f.width, *(len(c) for c in per_row)])
                m = np.zeros((n, width), dtype=np.int64)
                for i, c in enumerate(per_row):
                    m[i, : len(c)] = c
                codes[f.name] = m
            else:
                raw = np.array(
                    [np.nan if r.get(f.name) is None else float(r[f.name]) for r in rows],
                    dtype=np.float64,
                )
                values[f.name] = np.nan_to_num((raw - f.mean) / f.std).astype(np.float32)
        return FeatureTable(self.entity, self.fields, codes, values, np.ones(n, dtype=bool))

    # -- storage (the split cache): plain arrays, no pickle ----------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        import json

        out = {
            f"{prefix}.schema": np.array(json.dumps(self.schema())),
            f"{prefix}.present": self.present,
        }
        for name, m in self.codes.items():
            out[f"{prefix}.codes.{name}"] = m
        for name, v in self.values.items():
            out[f"{prefix}.values.{name}"] = v
        return out

    @staticmethod
    def from_arrays(z: Mapping[str, np.ndarray], prefix: str, entity: str) -> FeatureTable | None:
        import json

        if f"{prefix}.schema" not in z:
            return None
        fields = tuple(Field.from_dict(d) for d in json.loads(str(z[f"{prefix}.schema"][()])))
        return FeatureTable(
            entity=entity,
            fields=fields,
            codes={
                f.name: z[f"{prefix}.codes.{f.name}"] for f in fields if f.kind == "categorical"
            },
            values={f.name: z[f"{prefix}.values.{f.name}"] for f in fields if f.kind == "numeric"},
            present=z[f"{prefix}.present"],
        )


def _row_index(raw: RawFeatures, entity_ids: np.ndarray) -> np.ndarray:
    """(n_rows,) internal id of each feature row, -1 where the id is not in the log.

    Ids are compared as the log keeps them; feature ids of another kind than the log's
    (strings against integers) are compared through their text."""
    log = pd.Index(entity_ids)
    ids = raw.ids
    if len(ids) and len(entity_ids) and (ids.dtype.kind == "O") != (entity_ids.dtype.kind == "O"):
        log = pd.Index(np.asarray(entity_ids).astype(str))
        ids = np.asarray(ids).astype(str)
    return log.get_indexer(ids).astype(np.int64)


def encode(
    raw: RawFeatures, entity_ids: np.ndarray, in_train: np.ndarray, min_count: int = 1
) -> FeatureTable:
    """Encode ``raw`` over an id space (``entity_ids``: external id of each internal id), with
    vocabularies and normalisation from the entities where ``in_train`` is True.

    ``min_count``: a categorical value held by fewer training entities is left out of the
    vocabulary (unknown, code 0), so a tag written once does not get an embedding row that
    one item trains (``data.feature_min_count``).

    Rows naming an id that is not in the log are dropped and counted in a notice (never listed);
    an id given twice is a :class:`DataError` naming it and the file. No row matching the log
    at all is a :class:`DataError` (the ids of the file and of the log differ in kind or
    column).
    """
    from recsys.data.sources.files import notice

    n = len(entity_ids)
    where = _row_index(raw, entity_ids)
    matched = where >= 0
    if len(where) and not matched.any():
        raise DataError(
            f"{raw.source}: none of its {len(where)} {raw.entity} ids is a {raw.entity} of the "
            f"log (is the id column right? ids are compared as written)"
        )
    if (~matched).any():
        notice(
            f"data: {raw.source}: {int((~matched).sum())} of {len(where)} {raw.entity} rows name "
            f"no {raw.entity} of the log; ignored",
            about_data=True,
        )
    dup = pd.Series(where[matched]).duplicated()
    if dup.any():
        first = int(np.flatnonzero(matched)[np.flatnonzero(dup.to_numpy())[0]])
        twice = raw.ids[first].item() if isinstance(raw.ids[first], np.generic) else raw.ids[first]
        raise DataError(f"{raw.source}: {raw.entity} {twice!r} has two rows")
    present = np.zeros(n, dtype=bool)
    present[where[matched]] = True
    in_train = np.asarray(in_train, dtype=bool)

    fields: list[Field] = []
    codes: dict[str, np.ndarray] = {}
    cat = raw.categorical
    if len(cat):
        ent = where[cat["row"].to_numpy(np.int64)]
        cat = cat.assign(entity=ent)[ent >= 0]
    for name in sorted(set(cat["field"])) if len(cat) else []:
        part = cat[cat["field"] == name].drop_duplicates(["entity", "value"])
        e = part["entity"].to_numpy(np.int64)
        v = part["value"].astype(str).to_numpy()
        vocab, held = np.unique(v[in_train[e]], return_counts=True)
        vocab = vocab[held >= min_count]  # one row per (entity, value): held = training entities
        pos = np.searchsorted(vocab, v)
        known = pos < len(vocab)
        known[known] = vocab[pos[known]] == v[known]  # values of training entities only
        e, code = e[known], pos[known].astype(np.int64) + 1
        order = np.lexsort((code, e))
        e, code = e[order], code[order]
        counts = np.bincount(e, minlength=n)
        width = max(int(counts.max()) if len(counts) else 0, 1)
        start = np.cumsum(counts) - counts
        col = np.arange(len(e)) - start[e]
        m = np.zeros((n, width), dtype=np.int64)
        m[e, col] = code
        codes[name] = m
        fields.append(Field(name, "categorical", tuple(str(x) for x in vocab), width))

    values: dict[str, np.ndarray] = {}
    for name in sorted(raw.numeric):
        col = np.full(n, np.nan)
        col[where[matched]] = np.asarray(raw.numeric[name], dtype=np.float64)[matched]
        train_vals = col[in_train & ~np.isnan(col)]
        mean = float(train_vals.mean()) if len(train_vals) else 0.0
        std = float(train_vals.std()) if len(train_vals) else 1.0
        std = std if std > 0 else 1.0
        values[name] = np.nan_to_num((col - mean) / std).astype(np.float32)
        fields.append(Field(name, "numeric", (), 1, mean, std))
    return FeatureTable(raw.entity, tuple(fields), codes, values, present)


@dataclass(frozen=True)
class SplitFeatures:
    """What a feature-aware model receives before training (``Recommender.set_features``): the
    split's attribute tables and which entities the training part knows by id.

    Attributes:
        item, user: the split's tables, or None when the dataset has none.
        item_seen, user_seen: (n_items,) / (n_users,) bool, the entity has an event in training;
            an entity without one (a cold item, a held-out user) is represented from its
            attributes alone, never from an id embedding that training did not shape.
    """

    item: FeatureTable | None
    user: FeatureTable | None
    item_seen: np.ndarray
    user_seen: np.ndarray

    @staticmethod
    def of(split: Any) -> SplitFeatures:
        """From a :class:`~recsys.data.interactions.Split`."""
        train = split.train
        return SplitFeatures(
            item=split.item_features,
            user=split.user_features,
            item_seen=np.bincount(train.item, minlength=train.n_items) > 0,
            user_seen=np.bincount(train.user, minlength=train.n_users) > 0,
        )

    def schema(self) -> dict[str, Any]:
        """``{"item": [field dicts] | None, "user": [...] | None}``: plain values a model is
        built from (sizes, widths) and a checkpoint stores."""
        return {
            "item": None if self.item is None else self.item.schema(),
            "user": None if self.user is None else self.user.schema(),
        }
