"""RecDataModule: prepares a split once and serves the batch shape the model declares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch

from recsys.data.context import context_codes
from recsys.data.interactions import Interactions, Split, has_clock
from recsys.data.loaders import TRAIN_LOADERS, EvalLoader, Grouped, RowStore, TrainData
from recsys.data.pipeline import fingerprint, prepare
from recsys.errors import ConfigError


class BatchConsumer(Protocol):
    """What the datamodule asks of a model: the declarations of
    :class:`recsys.models.base.Recommender` that decide its batches."""

    train_batch: str | None
    num_negatives: int
    max_len: int | None

    def eval_users_per_chunk(self) -> int: ...

    def uses_context(self) -> bool: ...


def _rating_store(inter: Interactions, device: torch.device) -> RowStore | None:
    """Ratings laid out like ``inter.to_csr()``'s items (None for a log without ratings)."""
    if inter.rating is None:
        return None
    indptr = inter.to_csr().indptr
    ratings = inter.rating[inter.order()]
    return RowStore(torch.as_tensor(indptr, device=device), torch.as_tensor(ratings, device=device))


class RankShard:
    """Rank ``rank``'s share of a training loader under DDP: batches ``rank``, ``rank + world``, ...

    Every rank draws the same shuffled batches (same seed and epoch) and keeps a disjoint
    subset. Each keeps ``max(1, len // world)`` batches, so all ranks step the same number of
    times (up to ``world - 1`` batches of an epoch are skipped; the next epoch reshuffles).
    """

    def __init__(self, loader, rank: int, world_size: int):
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.sampler = loader.sampler  # Lightning calls sampler.set_epoch on it

    def __len__(self) -> int:
        return max(1, len(self.loader) // self.world_size)

    def __iter__(self):
        n, keep = len(self.loader), len(self)
        wanted = {(self.rank + j * self.world_size) % n for j in range(keep)}
        for i, batch in enumerate(self.loader):
            if i in wanted:
                yield batch


class RecDataModule(pl.LightningDataModule):
    """Serves one prepared split.

    Training batches follow the model's ``train_batch`` (the loader of that name in
    :data:`~recsys.data.loaders.TRAIN_LOADERS`); validation and test batches are
    :class:`~recsys.data.batches.EvalBatch` es whose history is what is known at that stage
    (train for validation, train + validation for test) and whose targets are the stage's
    held-out items.
    """

    def __init__(self, cfg: Mapping[str, Any], seed: int = 0, eval_batch_size: int | None = 1024):
        super().__init__()
        self.cfg = dict(cfg)
        self.seed = int(seed)
        # users per evaluation chunk; None: the model's own (set by ``configure_for``)
        self.eval_batch_size = None if eval_batch_size is None else int(eval_batch_size)
        self.split: Split | None = None
        self.train_batch: str | None = "pairs"
        self.num_negatives = 0
        self.max_len: int | None = None
        # whether batches carry each event's context (the model's ``uses_context()``)
        self.context = False

    # -- data -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            self.split = prepare(self.cfg, self.seed)

    @property
    def data(self) -> Split:
        self.setup()
        assert self.split is not None
        return self.split

    @property
    def n_users(self) -> int:
        return self.data.n_users

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cfg)

    def summary(self) -> dict[str, int]:
        d = self.data
        return {
            "n_users": d.n_users,
            "n_items": d.n_items,
            "n_train": len(d.train),
            "n_val": len(d.val),
            "n_test": len(d.test),
            **({"n_val_input": len(d.val_input)} if d.val_input is not None else {}),
            **({"n_test_input": len(d.test_input)} if d.test_input is not None else {}),
        }

    def history(self, stage: str) -> Interactions:
        """Events known when evaluating ``stage``: train, plus validation for test; or, for
        splits with held-out users (``Split.val_input``/``test_input``), their fold-in events."""
        d = self.data
        fold_in = d.val_input if stage == "val" else d.test_input
        if fold_in is not None:
            return fold_in
        return d.train if stage == "val" else d.train.concat(d.val)

    def train_matrix(self) -> torch.Tensor:
        """(n_users, n_items) sparse COO tensor of training events (1.0 each, summed on repeats)."""
        t = self.data.train
        idx = torch.as_tensor(np.stack([t.user, t.item]))
        return torch.sparse_coo_tensor(
            idx, torch.ones(len(t)), (t.n_users, t.n_items), check_invariants=False
        ).coalesce()

    # -- batches ----------------------------------------------------------------------------
    def configure_for(self, model: BatchConsumer, steps_per_call: int = 1) -> None:
        """Serve the batches ``model`` declares (its ``train_batch``, ``num_negatives`` and, for
        sequences, ``max_len``: the window is the model's alone), ``steps_per_call`` consecutive
        training batches per item when it is above 1; with each event's context
        (:mod:`recsys.data.context`) when the model uses it, which needs a log with a clock."""
        self.steps_per_call = int(steps_per_call)
        self.train_batch = model.train_batch
        self.num_negatives = int(model.num_negatives)
        self.max_len = model.max_len
        self.context = bool(model.uses_context())
        if self.context and not has_clock(self.data.train):
            name = self.cfg.get("name") or self.data.name or "the dataset"
            raise ConfigError(f"model.features.context: {name} has no timestamps")
        if self.eval_batch_size is None:
            self.eval_batch_size = int(model.eval_users_per_chunk())

    @property
    def device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _batch_size(self) -> int:
        bs = int(self.cfg.get("batch_size", 1024))
        if bs < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {bs}")
        return bs

    def train_dataloader(self):
        loader = self._train_loader()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:  # DDP: each rank its share of batches
            loader = RankShard(loader, trainer.global_rank, trainer.world_size)
        k = getattr(self, "steps_per_call", 1)
        return Grouped(loader, k) if k > 1 else loader

    def _train_loader(self):
        build = TRAIN_LOADERS.get(self.train_batch or "")  # closed form (None): no loader
        if build is None:
            raise ConfigError(f"model declares an unknown train_batch {self.train_batch!r}")
        return build(
            TrainData(
                self.data.train,
                self.device,
                self._batch_size(),
                self.seed,
                num_negatives=self.num_negatives,
                max_len=self.max_len,
                options=self.cfg,
                context=self._context(self.data.train),
            )
        )

    def _context(self, inter: Interactions) -> np.ndarray | None:
        """(len(inter), 3) context codes of ``inter``'s events when the batches carry context
        (the log's clock was checked by :meth:`configure_for`), else None. Gaps are measured
        within ``inter``: a history's first events have the gap to the previous event known at
        that stage."""
        if not self.context:
            return None
        assert inter.time is not None
        return context_codes(inter.user, inter.time)

    def _eval_loader(self, stage: str) -> EvalLoader:
        target = self.data.val if stage == "val" else self.data.test
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        history = self.history(stage)
        return EvalLoader(
            RowStore.from_log(history, self.device, self._context(history)),
            RowStore.from_csr(target.to_csr(), self.device),
            self.eval_batch_size or 1024,
            rank=rank,
            world_size=world,
            target_ratings=_rating_store(target, self.device),
        )

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")
