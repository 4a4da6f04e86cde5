"""The model contract.

A model is a ``torch.nn.Module`` subclassing :class:`Recommender`, with:

- ``train_batch``, the training batch it consumes, each served by one loader of
  :mod:`recsys.data.loaders`:

  - ``"pairs"``: :class:`~recsys.data.batches.PairBatch`, (user, item) pairs with
    ``num_negatives`` sampled negatives per pair (MF, NCF, BiasedMF);
  - ``"users"``: :class:`~recsys.data.batches.UserBatch`, users with their training rows
    (Mult-VAE, Mult-DAE);
  - ``"sequences"``: :class:`~recsys.data.batches.SeqBatch`, left-padded windows of the
    ``max_len`` most recent items and their next items (SASRec, BERT4Rec, GRU4Rec);
  - ``None``: a closed-form model (EASE, ItemKNN, popularity), which implements ``fit(train)``
    instead of ``loss``;

- a constructor taking ``num_users``, ``num_items`` and explicit, typed hyper-parameters (or
  ``**settings`` of a frozen dataclass named by ``settings_class``), which it validates,
  raising :class:`~recsys.errors.ConfigError` naming the ``model.<key>``;
- ``loss(batch)`` → a scalar tensor, or a dict with ``"loss"`` and other terms to log;
- ``score(users)`` → (B, num_items) scores for a :class:`~recsys.data.batches.UserBatch`
  (user ids plus the history known at that point), over the whole catalogue;
- its optional abilities, declared as class attributes (defaults below, all off), so that
  callers ask the model instead of probing it:

  - ``scores_history``: ``score`` depends on the history alone, never on the user id, so it
    scores a new user's history (user id -1): fold-in and sequence models, popularity;
  - ``represents_users``: ``user_representation(users)`` → (B, d) user vectors (segments,
    engagement features);
  - ``exposes_embeddings``: ``embeddings()`` → ``{"user": (U, d), "item": (I, d)}`` tables
    whose dot product is ``score`` (ANN search, the benchmark's FLOP count);
  - ``predicts_pairs``: ``predict(user, item)`` → (n,) one value per (user, item) pair
    (BiasedMF: a rating; NCF: an interaction probability), what ``eval.task=rating`` compares
    with held-out ratings;

  - ``needs_train_matrix``: ``set_train_matrix(train)`` receives the whole (U, I) sparse
    training matrix before the first training step (RecModule calls it when fitting starts): a
    graph model's adjacency (LightGCN);
  - ``applies_row_updates``: ``use_row_updates(updates)`` receives the optimizer's in-place row
    updates of its tables (``RowUpdate`` by parameter, from an optimizer that offers them:
    ``optim=row_adagrad optim.fused=true``) when training starts, and from then on applies them
    inside its backward instead of handing gradients on (the optimizer in backward of fused
    embedding tables); an empty mapping returns it to ordinary gradients. It returns whether it
    uses them (only some of its configurations can);
  - ``uses_features``: ``set_features(features)`` receives the split's item and user attribute
    tables (:class:`~recsys.data.features.SplitFeatures`) before training; the constructor takes
    ``feature_schema`` (their fields as plain values, injected by :func:`build_model`) to size
    its tables, and the model config's ``features`` says which fields it uses. A model that does
    not declare it refuses a non-null ``model.features`` with its ``no_features`` reason;
  - ``scores_new_items`` / ``scores_new_users``: ``new_item_vectors(attrs)`` /
    ``new_user_vectors(attrs)`` → (m, d) vectors of new products / customers from their
    attributes alone, scored against ``item_vectors()`` / ``user_representation`` with
    ``score_vectors`` (export and serving; the model must have been trained with the features);

  and two values the data side reads: ``num_negatives`` (negatives per training pair the pair
  loader draws) and ``max_len`` (the window of a sequence model; its positional table, saved
  with the model). ``eval_users_per_chunk()`` sizes evaluation chunks.

A declared ability must come with its method and an undeclared one must not (checked when a
subclass is defined); the default methods of absent abilities raise ``NotImplementedError``
naming the declaration. ``tests/unit/test_model_contract.py`` checks every shipped model's
declarations against its behaviour.

The model owns its objective; :class:`recsys.training.module.RecModule` owns optimisation, masking,
metrics and logging, and never branches on which model it holds.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recsys.errors import ConfigError
from recsys.models.features import FeatureSettings
from recsys.trust import Trust, resolve

TRAIN_BATCHES = ("pairs", "users", "sequences", None)
# each declared ability and the method that provides it
ABILITIES = {
    "represents_users": "user_representation",
    "exposes_embeddings": "embeddings",
    "predicts_pairs": "predict",
    "needs_train_matrix": "set_train_matrix",
    "applies_row_updates": "use_row_updates",
    "uses_features": "set_features",
    "scores_new_items": "new_item_vectors",
    "scores_new_users": "new_user_vectors",
}


class Recommender(nn.Module):
    """Base class of every model: declares the contract and its defaults, holds no behaviour."""

    train_batch: ClassVar[str | None] = "pairs"
    scores_history: ClassVar[bool] = False
    represents_users: ClassVar[bool] = False
    exposes_embeddings: ClassVar[bool] = False
    predicts_pairs: ClassVar[bool] = False
    needs_train_matrix: ClassVar[bool] = False
    applies_row_updates: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False
    scores_new_items: ClassVar[bool] = False
    scores_new_users: ClassVar[bool] = False
    # why a model that does not declare ``uses_features`` cannot use them (its ``model.features``
    # is refused with this reason instead of being ignored)
    no_features: ClassVar[str] = "it has no feature inputs"
    # the frozen dataclass of hyper-parameters a ``**settings`` constructor takes (build_model
    # checks config keys against its fields), or None for explicit keyword parameters
    settings_class: ClassVar[type | None] = None
    # config keys the model no longer has, each with the one value it is still accepted at
    # (the value that meant "off"): older checkpoints and artifacts carry them
    retired_keys: ClassVar[Mapping[str, Any]] = {}
    num_negatives: int = 0
    max_len: int | None = None
    # what a feature-aware model uses (its ``model.features``, resolved); none by default
    feats: FeatureSettings = FeatureSettings()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.train_batch not in TRAIN_BATCHES:
            raise TypeError(
                f"{cls.__name__}.train_batch must be one of {TRAIN_BATCHES}, got {cls.train_batch!r}"
            )
        if cls.train_batch is None and cls.fit is Recommender.fit:
            raise TypeError(f"{cls.__name__}: train_batch = None (closed form) needs fit()")
        for flag, method in ABILITIES.items():
            has = getattr(cls, method) is not getattr(Recommender, method)
            if has != bool(getattr(cls, flag)):
                raise TypeError(
                    f"{cls.__name__}: {flag} = {getattr(cls, flag)} but it "
                    f"{'defines' if has else 'does not define'} {method}()"
                )

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        require(num_users >= 1, "num_users", num_users, ">= 1")
        require(num_items >= 1, "num_items", num_items, ">= 1")
        self.num_users = int(num_users)
        self.num_items = int(num_items)

    def loss(self, batch: Any) -> Tensor | dict[str, Tensor]:
        """The training objective on one batch of the ``train_batch`` shape."""
        raise NotImplementedError(
            f"{type(self).__name__} has no loss() (train_batch = {self.train_batch!r})"
        )

    def fit(self, train: Tensor) -> None:
        """Closed-form models (``train_batch = None``): fit on the (U, I) sparse training matrix."""
        raise NotImplementedError(f"{type(self).__name__} trains by loss(), it has no fit()")

    def score(self, users: Any) -> Tensor:
        """(B, I) scores of every item for the users of a :class:`~recsys.data.batches.UserBatch`."""
        raise NotImplementedError

    def user_representation(self, users: Any) -> Tensor:
        """(B, d) one vector per user of the batch (``represents_users``)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no user_representation (represents_users = False)"
        )

    def embeddings(self) -> dict[str, Tensor]:
        """``{"user": (U, d), "item": (I, d)}`` with ``score = user @ item.T``
        (``exposes_embeddings``)."""
        raise NotImplementedError(
            f"{type(self).__name__} exposes no embeddings (exposes_embeddings = False)"
        )

    def predict(self, user: Tensor, item: Tensor) -> Tensor:
        """(n,) the model's value for each of the ``n`` (user, item) pairs (``predicts_pairs``)."""
        raise NotImplementedError(
            f"{type(self).__name__} predicts no (user, item) values (predicts_pairs = False)"
        )

    def set_train_matrix(self, train: Tensor) -> None:
        """Receive the (U, I) sparse training matrix before training (``needs_train_matrix``)."""
        raise NotImplementedError(
            f"{type(self).__name__} takes no training matrix (needs_train_matrix = False)"
        )

    def use_row_updates(self, updates: Mapping[Tensor, Any]) -> bool:
        """Apply the optimizer's row updates (``updates`` by parameter) in the backward pass from
        now on, or none (empty); returns whether they are used (``applies_row_updates``)."""
        raise NotImplementedError(
            f"{type(self).__name__} applies no row updates (applies_row_updates = False)"
        )

    def set_features(self, features: Any) -> None:
        """Receive the split's attribute tables (a :class:`~recsys.data.features.SplitFeatures`)
        before training (``uses_features``); the model copies what it uses into buffers, so a
        checkpoint or an artifact carries them."""
        raise NotImplementedError(f"{type(self).__name__} uses no features (uses_features = False)")

    def item_vectors(self) -> Tensor:
        """(I, d) every catalogue item's vector in the scoring space (ids and attributes), with
        ``score(users) = score_vectors(user_representation(users), item_vectors())``; by
        default the item table of :meth:`embeddings`."""
        if self.exposes_embeddings:
            return self.embeddings()["item"]
        raise NotImplementedError(f"{type(self).__name__} has no item vectors")

    def score_vectors(self, users: Tensor, items: Tensor) -> Tensor:
        """(B, m) scores of user vectors (B, d) against item vectors (m, d), as :meth:`score`
        combines them: the dot product unless the model overrides it (NCF's towers)."""
        return users @ items.T

    def new_item_vectors(self, attrs: Any) -> Tensor:
        """(m, d) vectors of new items from their attributes alone, a
        :class:`~recsys.data.features.FeatureTable` from ``encode_rows`` (``scores_new_items``:
        a model trained with item features)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot represent a new item (scores_new_items = False)"
        )

    def new_user_vectors(self, attrs: Any) -> Tensor:
        """(m, d) vectors of new customers from their attributes alone
        (``scores_new_users``: a model trained with user features)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot represent a new customer (scores_new_users = False)"
        )

    def features_used(self) -> dict[str, list[str]]:
        """Which attribute fields the model uses, by entity, and which event context fields
        (``{"item": [...], "user": [...], "context": [...]}``, empty lists for an id-only model):
        what a run's metrics.json reports."""
        return self.feats.used()

    def uses_context(self) -> bool:
        """Whether the model's inputs include each event's context (``model.features.context``):
        the datamodule then adds it to the sequence and history batches
        (``SeqBatch.context``, ``UserBatch.context``)."""
        return bool(self.feats.context)

    def eval_users_per_chunk(self) -> int:
        """Users scored per evaluation chunk when ``eval.batch_size`` is null (auto): enough for
        ~2^18 scores, so the (users, items) scores, their mask and top-k stay in cache (a
        BPR-MF pass on ml-100k: 11.8 ms at 128 users, 20.5 ms at 1,024), within [64, 1024].
        Sequence models run an encoder per user, which batches better: 1,024 (SASRec on
        ml-100k: 268 ms per pass at 1,024, 317 ms at 256)."""
        if self.train_batch == "sequences":
            return 1024
        return max(64, min(1024, (1 << 18) // self.num_items))


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise a one-line :class:`ConfigError` for ``model.<key>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"model.{key} must be {expected}, got {value!r}")


def build_model(
    cfg: Mapping[str, Any],
    num_users: int,
    num_items: int,
    trust: Trust | None = None,
    feature_schema: Mapping[str, Any] | None = None,
) -> Recommender:
    """Construct the model named by ``cfg["_target_"]`` with the dataset sizes injected.

    ``trust``: ``cfg`` was read from a file being loaded (a checkpoint, an artifact), whose
    ``_target_`` may name only recsys' own models or packages the user trusts
    (:mod:`recsys.trust`); None for the user's own config.

    ``feature_schema``: the split's feature fields (``SplitFeatures.schema()``), passed to models
    that declare ``uses_features``.

    Keys are checked against the constructor's parameters (and, for a ``**settings``
    constructor, the fields of its ``settings_class``) first, so a misspelt hyper-parameter is
    refused by name instead of being ignored. A retired key is dropped when it holds the value it
    is still accepted at, and refused otherwise. Uses no Hydra, so exported models rebuild alone.
    """
    if "_target_" not in cfg:
        raise ConfigError("model._target_ is missing: the model config must name its class")
    target = cfg["_target_"]
    cls = resolve(target, "model", "model._target_", trust)
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ConfigError(f"model._target_: {target} is not a recsys.models.base.Recommender")
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    if not cls.uses_features and "features" in kwargs:
        if kwargs.pop("features") is not None:
            raise ConfigError(
                f"model.features: {cls.__name__} cannot use features ({cls.no_features}); "
                "set model.features=null"
            )
    if cls.uses_features:
        kwargs["feature_schema"] = dict(feature_schema) if feature_schema else None
    for key, accepted in cls.retired_keys.items():
        if key in kwargs and kwargs.pop(key) != accepted:
            raise ConfigError(
                f"model.{key} was removed from {target} (only its former default "
                f"{accepted!r} is still accepted, from older checkpoints), got {cfg[key]!r}"
            )
    params = inspect.signature(cls).parameters
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    allowed = [
        n
        for n, p in params.items()
        if n not in ("self", "num_users", "num_items", "feature_schema") and p.kind not in kinds
    ]
    takes_settings = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_settings and cls.settings_class is not None:
        allowed += [f.name for f in dataclasses.fields(cls.settings_class)]
    if not takes_settings or cls.settings_class is not None:
        for key in kwargs:
            if key not in allowed and key != "feature_schema":
                raise ConfigError(
                    f"model.{key} is not a parameter of {target} (parameters: {', '.join(allowed)})"
                )
    try:
        model = cls(num_users=num_users, num_items=num_items, **kwargs)
    except TypeError as e:  # e.g. a missing required parameter
        raise ConfigError(f"model ({target}): {e}") from None
    return model


class _GatherRows(torch.autograd.Function):
    """``weight[idx]`` whose backward is one ``index_add_`` into a dense gradient."""

    @staticmethod
    def forward(ctx, weight: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = weight.shape[0]
        return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        flat = grad.reshape(idx.numel(), grad.shape[-1])  # explicit rows: d may be 0
        return flat.new_zeros(ctx.rows, flat.shape[1]).index_add_(0, idx.reshape(-1), flat), None


def lookup(table: nn.Embedding, idx: Tensor) -> Tensor:
    """``table(idx)``, with the same values and gradient, cheaper on CPU.

    PyTorch's CPU embedding backward costs ~3x an ``index_add_`` of the same rows (277 vs 89 us
    for 2,048 rows of 64 on one thread), a quarter of a BPR-MF training step. Tables with
    ``padding_idx``, ``max_norm`` or sparse gradients, and other devices, take ``nn.Embedding``'s
    own path.
    """
    return _GatherRows.apply(table.weight, idx) if gathers_on_cpu(table) else table(idx)


def gathers_on_cpu(table: nn.Embedding) -> bool:
    """Whether lookups in ``table`` may take the ``index_select`` / ``index_add_`` path (plain
    tables on the CPU), as :func:`lookup` and the models' fused losses do."""
    return (
        table.weight.device.type == "cpu"
        and table.padding_idx is None
        and table.max_norm is None
        and not table.sparse
    )
