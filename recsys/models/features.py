"""Attribute embeddings: items and users as the sum of their id and attribute embeddings.

Shared by the feature-aware models (SASRec, BERT4Rec, GRU4Rec, MF, NCF). A model's
``features`` setting (``model.features`` in its config) says what it uses:

- ``item`` / ``user``: ``null`` (none), ``all`` or a list of field names of the dataset's item /
  user table (:class:`~recsys.data.features.FeatureTable`);
- ``pool``: how a row's attributes combine: ``sum`` adds one pooled vector per field (each field
  the mean of its values' embeddings, ``EmbeddingBag(mode="mean")``), ``concat`` concatenates the
  per-field vectors and projects them back to ``d`` (one linear layer);
- ``ids``: whether the id embedding is part of the representation (``false``: attributes only);
- ``id_dropout``: in training, the share of entities whose id embedding is dropped from the
  batch's table, so the attribute part alone learns to stand for an entity (what a new
  product, which has no trained id, is scored with);
- ``context``: ``null`` (none), ``all`` or a list of the event context fields ``hour``,
  ``weekday``, ``gap`` (:mod:`recsys.data.context`): each input event's context, embedded and
  added to its item's embedding (the sequence models that take it; needs a log with a clock);
- ``history_match`` (SASRec, full-softmax ``ce``): add to every score a learned history–candidate
  attribute match, :class:`HistoryMatch` (default false: the scores are ``h · v`` alone);
  ``history_match_init``: the initial weight ``α_f`` of every field's match (default 1);
- ``negatives``: ``all`` (default) or ``seen``: with ``seen`` the training softmax (SASRec,
  ``ce``) ranks each target among the items with a training event only, so an item that training
  never saw (a cold item) is never pushed down as a negative.

An entity's representation is ``id_embedding · seen + attributes(entity)``, where ``seen`` is 1 for
entities with an event in training and 0 otherwise: a cold item (no training event) or a new
product is represented by its attributes alone, never by an id embedding that training did not
shape (LightFM, Kula 2015; DropoutNet, Volkovs et al. 2017 for ``id_dropout``). Numeric fields
enter through one linear map of their standardised values.

Lookups are tensor operations over padded code matrices held as buffers (saved with the
weights, so a checkpoint or artifact carries them); there is no Python loop per entity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.data.context import CONTEXT_FIELDS, CONTEXT_SIZES
from recsys.errors import ConfigError

POOLS = ("sum", "concat")
OPTIONS = (
    "item",
    "user",
    "pool",
    "ids",
    "id_dropout",
    "context",
    "history_match",
    "history_match_init",
    "negatives",
)
NEGATIVES = ("all", "seen")


@dataclass(frozen=True)
class FeatureSettings:
    """A model's ``features`` setting, resolved against the dataset's schema."""

    item: tuple[Mapping[str, Any], ...] = ()  # the item fields used (schema dicts)
    user: tuple[Mapping[str, Any], ...] = ()  # the user fields used
    pool: str = "sum"
    ids: bool = True
    id_dropout: float = 0.0
    context: tuple[str, ...] = ()  # the event context fields used (CONTEXT_FIELDS order)
    history_match: bool = False  # the history-candidate attribute match term (HistoryMatch)
    history_match_init: float = 1.0  # the initial weight of each field's match
    negatives: str = "all"  # the training softmax's items: all, or those seen in training

    @property
    def active(self) -> bool:
        """Whether attributes of items or users are used (event context is not an attribute)."""
        return bool(self.item or self.user)

    def used(self) -> dict[str, list[str]]:
        """Which fields the model uses, by entity, and which event context fields (what a run's
        metrics.json reports)."""
        return {
            "item": [str(f["name"]) for f in self.item],
            "user": [str(f["name"]) for f in self.user],
            "context": list(self.context),
        }

    @staticmethod
    def parse(
        value: Mapping[str, Any] | None,
        schema: Mapping[str, Any] | None,
        context: bool = False,
        history_match: bool = False,
    ) -> FeatureSettings:
        """Check ``model.features`` (None: ids only) against ``schema``
        (``SplitFeatures.schema()``), one :class:`ConfigError` line naming the key.

        ``context``: whether the model takes event context; one that does not refuses a non-null
        ``model.features.context`` instead of ignoring it. ``history_match``: whether the model
        has the history-candidate match term and the ``negatives`` choice (SASRec); one that
        does not refuses ``history_match: true`` and ``negatives: seen`` by name."""
        if value is None:
            return FeatureSettings()
        if not isinstance(value, Mapping):
            raise ConfigError(f"model.features must be null or a mapping, got {value!r}")
        unknown = sorted(set(value) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"model.features.{unknown[0]} is not an option (options: {', '.join(OPTIONS)})"
            )
        schema = schema or {}

        def fields(entity: str) -> tuple[Mapping[str, Any], ...]:
            want = value.get(entity)
            if want is None:
                return ()
            have = schema.get(entity)
            if not have:
                raise ConfigError(
                    f"model.features.{entity}: the dataset has no {entity} features "
                    f"(data.{entity}_features)"
                )
            if want == "all":
                return tuple(have)
            if isinstance(want, str) or not isinstance(want, Sequence):
                raise ConfigError(
                    f"model.features.{entity} must be null, all or a list of fields, got {want!r}"
                )
            names = [str(f["name"]) for f in have]
            missing = [w for w in want if w not in names]
            if missing:
                raise ConfigError(
                    f"model.features.{entity}: no field {missing[0]!r} (fields: {', '.join(names)})"
                )
            return tuple(f for f in have if f["name"] in set(want))

        s = FeatureSettings(
            item=fields("item"),
            user=fields("user"),
            context=_context_fields(value.get("context"), context),
            pool=str(value.get("pool", "sum")),
            ids=bool(value.get("ids", True)),
            id_dropout=float(value.get("id_dropout", 0.0)),
            history_match=bool(value.get("history_match", False)),
            history_match_init=float(value.get("history_match_init", 1.0)),
            negatives=str(value.get("negatives", "all")),
        )
        if s.negatives not in NEGATIVES:
            raise ConfigError(
                f"model.features.negatives must be one of {', '.join(NEGATIVES)}, "
                f"got {s.negatives!r}"
            )
        if "history_match_init" in value and not s.history_match:
            raise ConfigError("model.features.history_match_init needs history_match: true")
        for key, on in (("history_match", s.history_match), ("negatives", s.negatives != "all")):
            if on and not history_match:
                raise ConfigError(
                    f"model.features.{key}: only SASRec has it; set it to its default "
                    f"({'false' if key == 'history_match' else 'all'})"
                )
            if on and not any(f["kind"] == "categorical" for f in s.item):
                raise ConfigError(
                    f"model.features.{key} needs a categorical item field (model.features.item)"
                )
        if s.pool not in POOLS:
            raise ConfigError(
                f"model.features.pool must be one of {', '.join(POOLS)}, got {s.pool!r}"
            )
        if not 0 <= s.id_dropout < 1:
            raise ConfigError(f"model.features.id_dropout must be in [0, 1), got {s.id_dropout!r}")
        if not s.ids and not s.item and not s.user:
            raise ConfigError(
                "model.features.ids=false needs attributes (model.features.item or .user)"
            )
        return s


def _context_fields(want: Any, supported: bool) -> tuple[str, ...]:
    """The context fields ``model.features.context`` names (null, all or a list), in
    :data:`~recsys.data.context.CONTEXT_FIELDS` order; refused by a model without context input
    (``supported`` false)."""
    if want is None:
        return ()
    if not supported:
        raise ConfigError(
            "model.features.context: this model has no event context input (SASRec, BERT4Rec and "
            "GRU4Rec have one); "
            "set model.features.context=null"
        )
    if want == "all":
        return CONTEXT_FIELDS
    if isinstance(want, str) or not isinstance(want, Sequence) or not want:
        raise ConfigError(
            "model.features.context must be null, all or a non-empty list of "
            f"{', '.join(CONTEXT_FIELDS)}, got {want!r}"
        )
    unknown = [w for w in want if w not in CONTEXT_FIELDS]
    if unknown:
        raise ConfigError(
            f"model.features.context: no field {unknown[0]!r} (fields: {', '.join(CONTEXT_FIELDS)})"
        )
    return tuple(f for f in CONTEXT_FIELDS if f in set(want))


def context_tables(fields: Sequence[str], d: int, init_std: float) -> nn.ModuleDict:
    """One ``nn.Embedding(size + 1, d, padding_idx=0)`` per used context field (``fields``, from
    :attr:`FeatureSettings.context`), initialised normal with std ``init_std`` and a zero
    padding row (code 0: none) that gets no gradient. Empty for a model without context. A model
    builds it after its id-only modules, so the id-only initialisation draws are unchanged."""
    tables = nn.ModuleDict()
    for name in fields:
        emb = nn.Embedding(CONTEXT_SIZES[CONTEXT_FIELDS.index(name)] + 1, d, padding_idx=0)
        nn.init.normal_(emb.weight, std=init_std)
        with torch.no_grad():
            emb.weight[0].zero_()
        tables[name] = emb
    return tables


def no_context_error(model: str) -> ConfigError:
    """The refusal of a history or window without its events' context by a ``model`` that
    uses it (a history's events need their times; they are not guessed)."""
    return ConfigError(
        f"this {model} uses event context (model.features.context): its input needs each "
        "event's context (SeqBatch.context / UserBatch.context)"
    )


def embed_context(tables: nn.ModuleDict, context: Tensor | None, model: str) -> Tensor | None:
    """(..., d) the summed embeddings of the used context fields of (..., 3) codes
    (``SeqBatch.context``, ``UserBatch.padded_context``), or None when ``tables`` is empty (a
    model without context). A model with context refuses ``context=None``
    (:func:`no_context_error`)."""
    if not tables:
        return None
    if context is None:
        raise no_context_error(model)
    out: Tensor | None = None
    for name, emb in tables.items():
        e = emb(context[..., CONTEXT_FIELDS.index(name)])
        out = e if out is None else out + e
    return out


class AttributeEmbedding(nn.Module):
    """(n, d) pooled attribute vectors of ``n`` entities described by ``fields``.

    Buffers: ``codes{k}`` (n, width_k) int64 1-based codes of categorical field ``k`` (0: none),
    ``numeric`` (n, F_num) float32 standardised values; ``seen`` (n,) float32, 1 for entities with
    a training event. Parameters: one ``EmbeddingBag(size_k, d, mode="mean", padding_idx=0)`` per
    categorical field, one ``Linear(F_num, d, bias=False)`` for the numeric fields, and for
    ``pool="concat"`` a ``Linear(parts * d, d)`` projection.
    """

    def __init__(
        self, fields: Sequence[Mapping[str, Any]], n: int, d: int, pool: str, init_std: float
    ):
        super().__init__()
        self.names = [str(f["name"]) for f in fields]
        cats = [f for f in fields if f["kind"] == "categorical"]
        nums = [f for f in fields if f["kind"] == "numeric"]
        self.cat_names = [str(f["name"]) for f in cats]
        self.num_names = [str(f["name"]) for f in nums]
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(len(f.get("vocab", ())) + 1, d, mode="mean", padding_idx=0)
            for f in cats
        )
        for k, f in enumerate(cats):
            self.register_buffer(
                f"codes{k}", torch.zeros(n, max(int(f.get("width", 1)), 1), dtype=torch.long)
            )
        self.register_buffer("numeric", torch.zeros(n, len(nums)))
        self.register_buffer("seen", torch.ones(n))
        self.num = nn.Linear(len(nums), d, bias=False) if nums else None
        parts = len(cats) + (1 if nums else 0)
        self.proj = nn.Linear(parts * d, d) if pool == "concat" else None
        for bag in self.bags:
            nn.init.normal_(bag.weight, std=init_std)
            with torch.no_grad():
                bag.weight[0].zero_()
        if self.num is not None:
            nn.init.normal_(self.num.weight, std=init_std)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=init_std)
            nn.init.zeros_(self.proj.bias)

    def codes(self) -> list[Tensor]:
        return [getattr(self, f"codes{k}") for k in range(len(self.bags))]

    def load(self, table: Any, seen: np.ndarray) -> None:
        """Copy a :class:`~recsys.data.features.FeatureTable`'s codes and values (and which
        entities training knows) into the buffers."""
        for k, name in enumerate(self.cat_names):
            m = torch.as_tensor(np.asarray(table.codes[name]), dtype=torch.long)
            buf = getattr(self, f"codes{k}")
            if m.shape[0] != buf.shape[0]:
                raise ConfigError(
                    f"{table.entity} features: {m.shape[0]} rows for {buf.shape[0]} entities"
                )
            setattr(self, f"codes{k}", m.to(buf.device))
        if self.num_names:
            cols = [np.asarray(table.values[name], dtype=np.float32) for name in self.num_names]
            self.numeric = torch.as_tensor(np.stack(cols, 1)).to(self.numeric.device)
        self.seen = torch.as_tensor(np.asarray(seen, dtype=np.float32)).to(self.seen.device)

    def encode(self, codes: Sequence[Tensor], numeric: Tensor | None) -> Tensor:
        """(m, d) attribute vectors of ``m`` rows: ``codes[k]`` (m, w_k) int64 codes of field
        ``k``, ``numeric`` (m, F_num) float32 (None when there are no numeric fields)."""
        onnx = torch.onnx.is_in_onnx_export()  # no EmbeddingBag with a padding index there
        parts = [  # each (m, d)
            _bag_mean(bag, c) if onnx else bag(c) for bag, c in zip(self.bags, codes, strict=True)
        ]
        if self.num is not None and numeric is not None:
            parts.append(self.num(numeric))
        if self.proj is not None:
            return self.proj(torch.cat(parts, 1))
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    def forward(self, idx: Tensor | None = None) -> Tensor:
        """(n, d) the stored entities' attribute vectors, or (len(idx), d) those of ``idx``."""
        codes = self.codes()
        numeric = self.numeric if self.num is not None else None
        if idx is not None:
            codes = [c[idx] for c in codes]
            numeric = None if numeric is None else numeric[idx]
        return self.encode(codes, numeric)

    def encode_table(self, table: Any) -> Tensor:
        """(m, d) attribute vectors of new entities: a FeatureTable from
        :meth:`~recsys.data.features.FeatureTable.encode_rows` with this model's fields."""
        device = self.numeric.device
        codes = [
            torch.as_tensor(np.asarray(table.codes[n]), dtype=torch.long, device=device)
            for n in self.cat_names
        ]
        numeric = None
        if self.num_names:
            numeric = torch.as_tensor(
                np.stack(
                    [np.asarray(table.values[n], dtype=np.float32) for n in self.num_names], 1
                ),
                device=device,
            )
        return self.encode(codes, numeric)


def _bag_mean(bag: nn.EmbeddingBag, codes: Tensor) -> Tensor:
    """(m, d) what ``bag(codes)`` computes (the mean of each row's non-padding codes' embeddings,
    zero for a row without any), as a gather, a mask and a sum: ONNX has no ``EmbeddingBag`` with
    a padding index. Used while exporting to ONNX only; training and eager scoring keep the
    fused ``EmbeddingBag``."""
    mask = (codes != bag.padding_idx).to(bag.weight.dtype)  # (m, w)
    total = (bag.weight[codes] * mask[..., None]).sum(1)  # (m, d)
    return total / mask.sum(1, keepdim=True).clamp_min(1.0)


def entity_table(
    ids: Tensor | None,
    attrs: AttributeEmbedding | None,
    ids_on: bool,
    id_dropout: float,
    training: bool,
) -> Tensor:
    """(n, d) the entities' representation: ``ids · seen · keep + attrs()``.

    ``ids``: (n, d) id embeddings (None: none), ``seen`` from ``attrs`` (entities without a
    training event have no id part), ``keep``: in training with ``id_dropout``, a per-entity
    Bernoulli(1 - id_dropout) mask (not rescaled: the id part is either there or not, as for a new
    entity)."""
    if attrs is None:
        assert ids is not None
        return ids
    out = attrs()
    if ids is None or not ids_on:
        return out
    gate = attrs.seen[:, None]
    if training and id_dropout > 0:
        gate = gate * (torch.rand_like(gate) >= id_dropout)
    return out + ids * gate


def entity_rows(
    idx: Tensor,
    ids: Tensor | Callable[[Tensor], Tensor] | None,
    attrs: AttributeEmbedding | None,
    ids_on: bool,
    id_dropout: float,
    training: bool,
) -> Tensor:
    """(*idx.shape, d) the rows ``idx`` of :func:`entity_table`, computed for those rows only:
    a pair batch pools the attributes of its own entities, not of the whole catalogue.

    ``ids``: the (n, d) id table, or an id lookup (``idx`` → (*idx.shape, d), e.g. an
    ``nn.Embedding`` whose sparse gradients it keeps), or None for none. Pooling costs per row:
    a batch of at least one row per entity takes the rows of the whole table instead (an MF
    epoch at ml-100k's shape, 4,096 item rows a step for 1,682 items: 255 ms by rows, 186 ms by
    the table), given the id table itself. With ``id_dropout`` in training, one Bernoulli draw
    per distinct entity of ``idx``, so an entity drawn twice in a batch (a positive that is
    also another pair's negative) is dropped in both places, as in the table."""
    if attrs is None:
        assert ids is not None
        return ids[idx] if isinstance(ids, Tensor) else ids(idx)
    flat = idx.reshape(-1)
    whole = len(flat) >= len(attrs.seen)
    if whole and (ids is None or isinstance(ids, Tensor)):
        table = entity_table(ids, attrs, ids_on, id_dropout, training)
        return table.index_select(0, flat).view(*idx.shape, table.shape[-1])
    out = attrs().index_select(0, flat) if whole else attrs(flat)  # (n, d)
    if ids is not None and ids_on:
        gate = attrs.seen[flat]
        if training and id_dropout > 0:
            uniq, inverse = torch.unique(flat, return_inverse=True)
            gate = gate * (torch.rand(len(uniq), device=flat.device) >= id_dropout)[inverse]
        rows = ids.index_select(0, flat) if isinstance(ids, Tensor) else ids(flat)
        out = out + rows * gate[:, None]
    return out.view(*idx.shape, out.shape[-1])


# -- the item side of the sequence models (SASRec, BERT4Rec, GRU4Rec) ---------------------------
def sequence_item_features(
    model: str,
    features: Mapping[str, Any] | None,
    schema: Mapping[str, Any] | None,
    d: int,
    num_items: int,
    init_std: float,
    history_match: bool = False,
) -> tuple[FeatureSettings, AttributeEmbedding | None]:
    """A sequence model's ``model.features`` (items and context; user attributes refused: the
    model represents a user by the history alone) and its item attribute embedding, or None.
    ``history_match``: whether the model supports ``history_match`` and ``negatives``."""
    feats = FeatureSettings.parse(features, schema, context=True, history_match=history_match)
    if feats.user:
        raise ConfigError(
            f"model.features.user: {model} represents a user by the history alone; "
            "user attributes need MF or NCF"
        )
    attrs = (
        AttributeEmbedding(feats.item, num_items, d, feats.pool, init_std) if feats.item else None
    )
    return feats, attrs


def with_item_attributes(
    table: Tensor,
    num_items: int,
    attrs: AttributeEmbedding | None,
    feats: FeatureSettings,
    training: bool,
) -> Tensor:
    """The id table ``table`` (num_items + extra tokens, d) with its first ``num_items`` rows
    replaced by :func:`entity_table` (ids gated, plus attributes); unchanged without attributes."""
    if attrs is None:
        return table
    items = entity_table(table[:num_items], attrs, feats.ids, feats.id_dropout, training)
    return torch.cat([items, table[num_items:]])


def new_item_vectors_of(model: str, attrs: AttributeEmbedding | None, table: Any) -> Tensor:
    """(m, d) vectors of new items from their attributes alone (a FeatureTable from
    ``FeatureTable.encode_rows``); a model trained without item features refuses by name."""
    if attrs is None:
        raise ConfigError(f"this {model} uses no item features: a new item cannot be scored")
    return attrs.encode_table(table)


class HistoryMatch(nn.Module):
    r"""The history–candidate attribute match that SASRec adds to its scores
    (``model.features.history_match``):

    .. math:: m(u, i) = \sum_f \alpha_f \, x_f(i) \cdot c_f(u), \qquad
              c_f(u) = \sum_{j} \gamma^{\,t - j} x_f(s_j)

    over the categorical item fields ``f``. ``x_f(i)`` is item ``i``'s multi-hot over field
    ``f``'s values, each value weighted by its inverse document frequency over the items seen in
    training, ``idf(v) = ln((1 + N_f) / (1 + df(v))) + 1`` (``N_f`` seen items holding a value of
    ``f``, ``df(v)`` of them holding ``v``; attr-kNN's weighting), scaled to unit length;
    ``c_f(u)`` sums the ``x_f`` of the history's items ``s_j`` up to position ``t``, each
    discounted by ``γ`` per step back (``γ = 1``: a plain sum, whose match is the summed
    cosine similarity of attr-kNN). ``α_f`` (init ``init``, ``history_match_init``) and ``γ`` (a
    sigmoid, init 0.95) are learned.

    The term depends on an item's attributes only, never on its id, so a cold item (or a new
    product given its attributes) gets it like any other. With it, ``score(u, i) = h_u · v_i +
    m(u, i)`` is still a dot product: ``[h_u, α ⊙ c(u)] · [v_i, x(i)]``
    (:meth:`user_part`, :meth:`item_rows`), which is what ``user_representation`` and
    ``item_vectors`` return. Everything is tensor operations over the attribute code matrices of
    the :class:`AttributeEmbedding` (no parameters or buffers of its own beyond ``α``, ``γ``).
    """

    def __init__(self, attrs: AttributeEmbedding, init: float = 1.0, decay: float = 0.95):
        super().__init__()
        sizes = [bag.num_embeddings - 1 for bag in attrs.bags]
        if not sizes:
            raise ConfigError("model.features.history_match needs a categorical item field")
        self.offsets = [int(x) for x in np.cumsum([0, *sizes])]  # column of field k's code 1
        self.dim = self.offsets[-1]
        self.alpha = nn.Parameter(torch.full((len(sizes),), float(init)))
        self.decay = nn.Parameter(torch.tensor(float(np.log(decay / (1.0 - decay)))))
        field = np.repeat(np.arange(len(sizes)), sizes)
        self.register_buffer("field_of", torch.as_tensor(field, dtype=torch.long), persistent=False)
        # x(i) of the stored items depends only on the attribute buffers: built once per state
        # of them (a load, a checkpoint, a move to another device), not per batch or request
        self._cache_key: tuple | None = None
        self._cache: dict[str, Any] = {}

    def _cached(self, attrs: AttributeEmbedding, name: str, build: Any) -> Any:
        key = tuple((t.data_ptr(), t._version, t.device) for t in (attrs.seen, *attrs.codes()))
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def gamma(self) -> Tensor:
        return torch.sigmoid(self.decay)

    def idf(self, attrs: AttributeEmbedding) -> list[Tensor]:
        """Per field, (size_k + 1,) the IDF of each code over the seen items (code 0: 0)."""
        seen = (attrs.seen > 0).to(attrs.seen.dtype)  # (n,)
        out = []
        for k, codes in enumerate(attrs.codes()):
            size = self.offsets[k + 1] - self.offsets[k] + 1
            n = ((codes > 0).to(seen.dtype).amax(1) * seen).sum()  # seen items with a value
            valid = (codes > 0) & (codes < size)
            held = valid.to(seen.dtype) * seen[:, None]  # (n, w): a seen item's codes
            # df: a count per code over the seen items, as a scatter-add (exports to ONNX,
            # unlike bincount); exact in float32 below 2^24 items
            c = torch.where(valid, codes, torch.zeros_like(codes)).reshape(-1)
            df = held.new_zeros(size).scatter_add_(0, c, held.reshape(-1))
            idf = torch.log((1.0 + n) / (1.0 + df)) + 1.0
            out.append(idf * (torch.arange(size, device=idf.device) > 0))  # code 0: 0
        return out

    def rows(
        self, attrs: AttributeEmbedding, codes: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(cols, w)``, each (m, W): the value columns (``dim`` for none) and weights of the
        ``x(i)`` of ``m`` items given by their code matrices (default: every stored item)."""
        if codes is None:
            return self._cached(attrs, "rows", lambda: self._rows(attrs, attrs.codes()))
        return self._rows(attrs, list(codes))

    def _rows(self, attrs: AttributeEmbedding, codes: list[Tensor]) -> tuple[Tensor, Tensor]:
        cols, ws = [], []
        for k, (c, idf) in enumerate(zip(codes, self.idf(attrs), strict=True)):
            c = c.clamp(max=len(idf) - 1)
            w = idf[c]  # (m, w_k), 0 where no value
            w = w / w.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
            cols.append(torch.where(c > 0, c - 1 + self.offsets[k], self.dim))
            ws.append(w)
        return torch.cat(cols, 1), torch.cat(ws, 1)

    def item_rows(self, attrs: AttributeEmbedding, codes: Sequence[Tensor] | None = None) -> Tensor:
        """(m, dim) dense ``x(i)`` of the items (:meth:`rows`)."""
        cols, w = self.rows(attrs, codes)
        out = w.new_zeros(cols.shape[0], self.dim + 1).scatter_add_(1, cols, w)
        return out[:, : self.dim]

    def item_matrix(self, attrs: AttributeEmbedding, seen_only: bool = False) -> Tensor:
        """(m, dim) sparse (COO, coalesced) ``x(i)`` of every stored item, or (``seen_only``) of
        the items with a training event, in id order."""
        return self._cached(attrs, f"matrix{seen_only}", lambda: self._matrix(attrs, seen_only))

    def _matrix(self, attrs: AttributeEmbedding, seen_only: bool) -> Tensor:
        cols, w = self.rows(attrs)
        if seen_only:
            idx = torch.nonzero(attrs.seen > 0).squeeze(1)
            cols, w = cols[idx], w[idx]
        m = cols.shape[0]
        keep = cols < self.dim
        rows = torch.arange(m, device=cols.device)[:, None].expand_as(cols)[keep]
        coo = torch.sparse_coo_tensor(
            torch.stack([rows, cols[keep]]), w[keep], (m, self.dim), check_invariants=False
        )
        return coo.coalesce()

    def _sequence_rows(self, attrs: AttributeEmbedding, seq: Tensor) -> Tensor:
        """(B, L, dim) ``x`` of each position of the (B, L) item sequences (padding, index
        ``num_items``: zero)."""
        cols, w = self.rows(attrs)
        cols = torch.cat([cols, cols.new_full((1, cols.shape[1]), self.dim)])
        w = torch.cat([w, w.new_zeros(1, w.shape[1])])
        sc, sw = cols[seq], w[seq]  # (B, L, W)
        out = sw.new_zeros(*seq.shape, self.dim + 1).scatter_add_(2, sc, sw)
        return out[..., : self.dim]

    def scale(self) -> Tensor:
        """(dim,) ``α_f`` of each value column's field."""
        return self.alpha[self.field_of]

    def history(self, attrs: AttributeEmbedding, seq: Tensor) -> Tensor:
        """(B, L, dim) ``α ⊙ c`` at every position of the (B, L) sequences: the discounted sum
        of the ``x`` of the items up to and including that position (causal)."""
        x = self._sequence_rows(attrs, seq)
        L = seq.shape[1]
        t = torch.arange(L, device=seq.device)
        back = (t[:, None] - t[None, :]).clamp_min(0).to(x.dtype)  # (L, L) steps back
        a = torch.pow(self.gamma(), back) * (t[:, None] >= t[None, :])  # (L, L) lower triangle
        return torch.matmul(a, x) * self.scale()  # (B, L, dim)

    def user_part(self, attrs: AttributeEmbedding, seq: Tensor) -> Tensor:
        """(B, dim) ``α ⊙ c`` after the last position of the left-padded (B, L) sequences."""
        x = self._sequence_rows(attrs, seq)
        L = seq.shape[1]
        back = torch.arange(L - 1, -1, -1, device=seq.device).to(x.dtype)
        a = torch.pow(self.gamma(), back)  # (L,)
        return torch.einsum("l,bld->bd", a, x) * self.scale()

    def scores(self, attrs: AttributeEmbedding, part: Tensor) -> Tensor:
        """(B, I) the match of users given by :meth:`user_part` ``part`` (B, dim) with every
        stored item: ``part · x(i)``, a gather over each item's few values (dense tensor
        operations, traceable)."""
        cols, w = self.rows(attrs)  # (I, W)
        padded = torch.cat([part, part.new_zeros(part.shape[0], 1)], 1)  # (B, dim + 1)
        return (padded[:, cols] * w).sum(-1)
