"""The model contract.

A model is a ``torch.nn.Module`` (subclass :class:`Recommender`) with:

- ``train_batch``: the training batch shape it consumes — ``"pairs"``
  (:class:`~recsys.data.batches.PairBatch`, with ``num_negatives`` sampled negatives per pair),
  ``"users"`` (:class:`~recsys.data.batches.UserBatch` of training rows), or ``None`` for a
  closed-form model, which implements ``fit(train)`` instead of ``loss``;
- a constructor taking ``num_users``, ``num_items`` and explicit, typed hyper-parameters, which it
  validates (raising :class:`~recsys.errors.ConfigError` naming the ``model.<key>``);
- ``loss(batch)`` → a scalar tensor, or a dict with ``"loss"`` and other terms to log;
- ``score(users)`` → (B, num_items) scores for a :class:`~recsys.data.batches.UserBatch`
  (user ids plus the history known at that point), over the whole catalogue.

The model owns its objective; :class:`recsys.training.module.RecModule` owns optimisation, masking,
metrics and logging, and never branches on which model it holds.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recsys.errors import ConfigError


class Recommender(nn.Module):
    """Base class of every model: declares the contract, holds no behaviour of its own."""

    train_batch: ClassVar[str | None] = "pairs"
    num_negatives: int = 0

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        require(num_users >= 1, "num_users", num_users, ">= 1")
        require(num_items >= 1, "num_items", num_items, ">= 1")
        self.num_users = int(num_users)
        self.num_items = int(num_items)

    def loss(self, batch: Any) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def score(self, users: Any) -> Tensor:
        raise NotImplementedError

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


def import_target(path: str) -> Any:
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"model._target_: cannot import {path!r}") from None


def build_model(cfg: Mapping[str, Any], num_users: int, num_items: int) -> Recommender:
    """Construct the model named by ``cfg["_target_"]`` with the dataset sizes injected.

    Keys are checked against the constructor's signature first, so a misspelt hyper-parameter
    is refused by name instead of being ignored. Uses no Hydra, so exported models rebuild alone.
    """
    if "_target_" not in cfg:
        raise ConfigError("model._target_ is missing: the model config must name its class")
    cls = import_target(cfg["_target_"])
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n in params if n not in ("self", "num_users", "num_items")]
    if not accepts_any:
        for key in kwargs:
            if key not in params or key in ("num_users", "num_items"):
                raise ConfigError(
                    f"model.{key} is not a parameter of {cfg['_target_']} "
                    f"(parameters: {', '.join(allowed)})"
                )
    try:
        model = cls(num_users=num_users, num_items=num_items, **kwargs)
    except TypeError as e:  # e.g. a missing required parameter
        raise ConfigError(f"model ({cfg['_target_']}): {e}") from None
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
