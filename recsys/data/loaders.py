"""The loaders that cut training and evaluation batches (:mod:`recsys.data.batches`) with
tensor ops, and the registry of training loaders by the batch shape a model declares.

A model's ``train_batch`` (:mod:`recsys.models.base`) names one entry of :data:`TRAIN_LOADERS`,
a function from :class:`TrainData` to a loader: adding a batch shape is one loader and one entry.

Loaders are plain iterables with ``__len__``; batches are cut from tensors on the model's device
by indexing, never by a Python loop over users or interactions. A loader's ``sampler.set_epoch``
(called by Lightning before each epoch) seeds its randomness from ``(seed, epoch)``, so a resumed
run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys.data.batches import EvalBatch, PairBatch, SeqBatch, UserBatch
from recsys.data.interactions import CSR, Interactions
from recsys.errors import ConfigError


class RowStore:
    """A CSR (users → items in time order) kept as tensors on one device.

    ``context``: (nnz, 3) context codes of each entry's event (:mod:`recsys.data.context`),
    aligned with ``indices`` (the same permutation of the log), or None. Stored as uint8 (codes
    are small): batches receive them as int64."""

    def __init__(self, indptr: Tensor, indices: Tensor, context: Tensor | None = None):
        self.indptr = indptr
        self.indices = indices
        self.context = context
        if context is not None and context.shape[0] != indices.shape[0]:
            raise ValueError(f"context has {context.shape[0]} rows for {indices.shape[0]} entries")

    @staticmethod
    def from_csr(csr: CSR, device: torch.device) -> RowStore:
        return RowStore(
            torch.as_tensor(csr.indptr, device=device), torch.as_tensor(csr.indices, device=device)
        )

    @staticmethod
    def from_log(
        inter: Interactions, device: torch.device, context: np.ndarray | None = None
    ) -> RowStore:
        """``inter.to_csr()`` as a store, with ``context`` (None, or the (len(inter), 3) codes of
        :func:`~recsys.data.context.interaction_context`, in the log's order) laid out like its
        items: the permutation ``to_csr`` sorts the events by."""
        store = RowStore.from_csr(inter.to_csr(), device)
        if context is None:
            return store
        codes = np.asarray(context)[inter.order()]
        dtype = np.uint8 if codes.size == 0 or int(codes.max()) < 256 else np.int64
        return RowStore(
            store.indptr, store.indices, torch.as_tensor(codes.astype(dtype), device=device)
        )

    def _positions(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Positions in ``indices`` of ``rows``' entries, concatenated, and their offsets."""
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        total = int(offsets[-1])
        row_of = torch.repeat_interleave(
            torch.arange(len(rows), device=rows.device), counts, output_size=total
        )
        idx = starts[row_of] + torch.arange(total, device=rows.device) - offsets[row_of]
        return idx, offsets

    def gather(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Items and offsets of ``rows``, concatenated: (nnz,), (len(rows) + 1,)."""
        idx, offsets = self._positions(rows)
        return self.indices[idx], offsets

    def span(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """:meth:`gather` of the contiguous rows ``start..stop-1``: a slice, no index arithmetic."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return self.indices[int(lo) : int(hi)], self.indptr[start : stop + 1] - lo

    def take(self, rows: Tensor, contiguous: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`gather`, or :meth:`span` when the caller knows ``rows`` ascends by one."""
        if contiguous and len(rows):
            return self.span(int(rows[0]), int(rows[-1]) + 1)
        return self.gather(rows)

    def users(self, rows: Tensor, contiguous: bool = False) -> UserBatch:
        """The rows as a batch (``contiguous``: as in :meth:`take`), with their entries' context
        (int64) when the store holds one."""
        if self.context is None:
            items, offsets = self.take(rows, contiguous)
            return UserBatch(rows, items, offsets)
        if contiguous and len(rows):
            lo, hi = int(self.indptr[int(rows[0])]), int(self.indptr[int(rows[-1]) + 1])
            offsets = self.indptr[int(rows[0]) : int(rows[-1]) + 2] - lo
            return UserBatch(rows, self.indices[lo:hi], offsets, self.context[lo:hi].long())
        idx, offsets = self._positions(rows)
        return UserBatch(rows, self.indices[idx], offsets, self.context[idx].long())

    def distinct_counts(self) -> Tensor:
        """(rows,) number of distinct items in each row (a repeated item counts once)."""
        counts = self.indptr[1:] - self.indptr[:-1]
        if len(self.indices) == 0 or int(counts.max()) <= 1:
            return counts
        rows = torch.repeat_interleave(
            torch.arange(len(counts), device=counts.device), counts, output_size=len(self.indices)
        )
        width = int(self.indices.max()) + 1
        pairs = torch.unique(rows * width + self.indices)  # sorted distinct (row, item) keys
        return torch.bincount(pairs // width, minlength=len(counts))


class _EpochSeed:
    """Lightning calls ``set_epoch`` on a loader's ``sampler``; randomness derives from it."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return g


class PairSet:
    """Membership of (user, item) pairs, as the keys ``user * num_items + item``.

    A bit per possible pair (one ``index_select`` and two bit operations per lookup) when that
    table is small (at most 256 MiB) or at most 4x the sorted int64 keys (density >= 1/256:
    MovieLens, Netflix, Amazon Beauty); otherwise the sorted keys, where a lookup is a binary
    search over every training pair (20+ dependent cache misses at 20M pairs: benchmarks/scale.md).
    Both answer the same.
    """

    BITSET_MIN_BYTES = 256 << 20
    BITSET_MAX_RATIO = 4  # bitset bytes / sorted int64 key bytes

    def __init__(self, user: Tensor, item: Tensor, num_items: int, bitset: bool | None = None):
        n_keys = (int(user.max()) + 1) * num_items if len(user) else 0
        if bitset is None:
            size = n_keys / 8
            bitset = size <= max(self.BITSET_MIN_BYTES, self.BITSET_MAX_RATIO * 8 * len(user))
        self.bits: Tensor | None = None
        self.keys: Tensor | None = None
        self.num_items = num_items
        keys = user.long() * num_items + item.long()
        if bitset:
            keys = torch.unique(keys)  # distinct: a bit's power of two is added once
            self.bits = torch.zeros((n_keys + 63) // 64, dtype=torch.long, device=user.device)
            for s in range(0, len(keys), 1 << 22):  # bounded temporaries at 100M pairs
                k = keys[s : s + (1 << 22)]
                # distinct powers of two add without carries: the sum is the bitwise or
                self.bits.index_add_(0, k >> 6, torch.ones_like(k) << (k & 63))
        else:
            # int32 keys when they fit: the membership search costs ~40% less
            if n_keys < 2**31:
                keys = keys.int()
            self.keys = torch.sort(keys).values

    def contains(self, keys: Tensor) -> Tensor:
        """(n,) bool: whether each key (int64 ``user * num_items + item``) is a pair of the set."""
        if self.bits is not None and len(self.bits):
            words = self.bits.index_select(0, keys >> 6)
            return (words >> (keys & 63)) & 1 == 1
        if self.keys is None:  # no pairs at all
            return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
        return _in_sorted(self.keys, keys)


def _in_sorted(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    if len(sorted_keys) == 0:
        return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    keys = keys.to(sorted_keys.dtype)
    pos = torch.searchsorted(sorted_keys, keys).clamp_(max=len(sorted_keys) - 1)
    return sorted_keys.index_select(0, pos) == keys


def sample_negatives(
    user: Tensor,
    num_items: int,
    num: int,
    positives: PairSet | Tensor | None,
    generator: torch.Generator,
    max_rounds: int = 20,
) -> Tensor:
    """(B, num) items drawn uniformly, redrawn where they hit a training positive of the user.

    ``positives`` is a :class:`PairSet` of the training pairs, or the sorted tensor of
    ``user * num_items + item`` over them (a binary search per draw); only the hits are redrawn
    (a few rounds at usual densities; after ``max_rounds`` the remaining draws are kept).
    """
    neg = torch.randint(num_items, (len(user), num), generator=generator, device=user.device)
    if positives is None or (isinstance(positives, Tensor) and len(positives) == 0):
        return neg
    if isinstance(positives, PairSet):
        contains = positives.contains
    else:
        contains = lambda keys: _in_sorted(positives, keys)  # noqa: E731
    # only redrawn entries can hit again: each round checks the previous round's hits alone
    # (the same draws, in the same order, as checking the whole batch every round)
    flat = neg.view(-1)
    owner = user.repeat_interleave(num) if num > 1 else user
    idx = None  # None: every entry
    for _ in range(max_rounds):
        cand = flat if idx is None else flat[idx]
        keys = (owner if idx is None else owner[idx]) * num_items + cand
        hit = contains(keys)
        idx = torch.nonzero(hit).flatten() if idx is None else idx[hit]
        n_hit = len(idx)
        if n_hit == 0:
            break
        flat[idx] = torch.randint(num_items, (n_hit,), generator=generator, device=user.device)
    return neg


class PairLoader:
    """Shuffled training pairs with ``num_negatives`` sampled negatives per pair."""

    def __init__(
        self,
        user: Tensor,
        item: Tensor,
        rating: Tensor | None,
        num_items: int,
        num_negatives: int,
        batch_size: int,
        seed: int,
    ):
        self.user, self.item, self.rating = user, item, rating
        self.num_items, self.num_negatives, self.batch_size = num_items, num_negatives, batch_size
        self.sampler = _EpochSeed(seed)
        self.positives = PairSet(user, item, num_items) if num_negatives else None

    def __len__(self) -> int:
        return -(-len(self.user) // self.batch_size)

    def __iter__(self) -> Iterator[PairBatch]:
        g = self.sampler.generator(self.user.device)
        perm = torch.randperm(len(self.user), generator=g, device=self.user.device)
        # shuffle and draw negatives for a block of batches at once (~2^18 pairs: one set of
        # tensor ops per block instead of per batch, bounded memory at 100M pairs), then slice
        # views; ``index_select`` is ~5x cheaper than advanced indexing on CPU
        bs = self.batch_size
        block = bs * max(1, (1 << 18) // bs)
        for b0 in range(0, len(perm), block):
            idx = perm[b0 : b0 + block]
            users = self.user.index_select(0, idx)
            items = self.item.index_select(0, idx)
            ratings = None if self.rating is None else self.rating.index_select(0, idx)
            negs = None
            if self.num_negatives:
                negs = sample_negatives(
                    users, self.num_items, self.num_negatives, self.positives, g
                )
            for s in range(0, len(idx), bs):
                yield PairBatch(
                    user=users[s : s + bs],
                    item=items[s : s + bs],
                    neg=None if negs is None else negs[s : s + bs],
                    rating=None if ratings is None else ratings[s : s + bs],
                )


class Grouped:
    """``k`` consecutive batches of ``loader`` per item, as a list (the last may be shorter):
    the training loader under ``optim.steps_per_call = k``."""

    def __init__(self, loader, k: int):
        self.loader, self.k = loader, k
        self.sampler = loader.sampler  # Lightning calls sampler.set_epoch on it

    def __len__(self) -> int:
        return -(-len(self.loader) // self.k)

    def __iter__(self) -> Iterator[list]:
        group: list = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.k:
                yield group
                group = []
        if group:
            yield group


class UserLoader:
    """Shuffled users (those with a training history) with their training rows."""

    def __init__(self, store: RowStore, batch_size: int, seed: int):
        self.store = store
        counts = store.indptr[1:] - store.indptr[:-1]
        self.active = torch.nonzero(counts > 0).flatten()
        self.batch_size = batch_size
        self.sampler = _EpochSeed(seed)

    def __len__(self) -> int:
        return -(-len(self.active) // self.batch_size)

    def __iter__(self) -> Iterator[UserBatch]:
        g = self.sampler.generator(self.active.device)
        perm = self.active[torch.randperm(len(self.active), generator=g, device=g.device)]
        for start in range(0, len(perm), self.batch_size):
            yield self.store.users(perm[start : start + self.batch_size])


class EvalLoader:
    """Users with at least one held-out item, in id order, with their history and targets.

    ``rank``/``world_size`` give each process a disjoint slice of the users (DDP).
    ``target_ratings``, a store aligned with ``targets`` whose entries are the targets' ratings,
    adds them to the batches (rating evaluation).
    """

    def __init__(
        self,
        history: RowStore,
        targets: RowStore,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        target_ratings: RowStore | None = None,
    ):
        self.history, self.targets, self.target_ratings = history, targets, target_ratings
        counts = targets.indptr[1:] - targets.indptr[:-1]
        self.users = torch.nonzero(counts > 0).flatten()[rank::world_size]
        self.n_rel = targets.distinct_counts()[self.users]  # once, not per batch
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def __iter__(self) -> Iterator[EvalBatch]:
        for start in range(0, len(self.users), self.batch_size):
            rows = self.users[start : start + self.batch_size]
            n_rel = self.n_rel[start : start + self.batch_size]
            # users ascend: a chunk without gaps is a slice of both stores (the common case)
            contiguous = int(rows[-1]) - int(rows[0]) == len(rows) - 1
            t_items, t_offsets = self.targets.take(rows, contiguous)
            t_rows = torch.repeat_interleave(
                torch.arange(len(rows), device=rows.device),
                t_offsets[1:] - t_offsets[:-1],
                output_size=len(t_items),
            )
            ratings = None
            if self.target_ratings is not None:
                ratings = self.target_ratings.take(rows, contiguous)[0]
            users = self.history.users(rows, contiguous)
            yield EvalBatch(users, t_rows, t_items, n_rel, ratings)


SEQ_WINDOWING = ("truncate", "windows")


def build_sequences(
    store: RowStore, max_len: int, pad: int, windowing: str = "windows", stride: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Every user's time-ordered row as next-item training windows, built once with tensor ops.

    A user with ``n`` items has ``n - 1`` transitions ``(row[j - 1] -> row[j])``. ``truncate``
    keeps one window per user, the ``max_len`` most recent transitions. ``windows`` ends a
    window every ``stride`` transitions counted back from the most recent (``stride`` defaults to
    ``max_len``: disjoint windows). Each window holds up to ``max_len`` transitions as context but
    trains (``target`` not ``pad``) only its newest ``stride`` ones, except a user's oldest window,
    which trains all of its own: every transition is trained exactly once, and with
    ``stride < max_len`` always with at least ``max_len - stride`` items of context (RecBole's
    prefixes have up to ``max_len``), at ``max_len / stride`` times the encoder cost.

    Returns:
        user (R,), input (R, max_len), target (R, max_len): one row per window, left-padded.
    """
    return _cut(store, max_len, pad, windowing, stride)[:3]


def _cut(
    store: RowStore, max_len: int, pad: int, windowing: str, stride: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`build_sequences` plus, when ``store`` holds context, the (R, max_len, 3) context
    codes of each input position (0 at padding, in the store's dtype), else None."""
    user, at, valid, trained = _windows(store, max_len, windowing, stride)
    items = store.indices
    inp = torch.where(valid, items[at - 1], pad)
    tgt = torch.where(trained, items[at], pad)
    ctx = None
    if store.context is not None:
        ctx = store.context[at - 1] * valid[..., None].to(store.context.dtype)
    return user, inp, tgt, ctx


def _windows(
    store: RowStore, max_len: int, windowing: str, stride: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The windows of :func:`build_sequences` as positions in ``store.indices``: user (R,), the
    target position ``at`` (R, max_len) (the input is at ``at - 1``), and the masks ``valid``
    (a real input) and ``trained`` (a trained target), both (R, max_len)."""
    if windowing not in SEQ_WINDOWING:
        raise ValueError(f"windowing must be one of {SEQ_WINDOWING}, got {windowing!r}")
    stride = max_len if stride is None else int(stride)
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in [1, max_len={max_len}], got {stride}")
    indptr = store.indptr
    dev = indptr.device
    n_trans = (indptr[1:] - indptr[:-1] - 1).clamp(min=0)  # (U,)
    n_win = torch.where(n_trans > 0, 1 + (-(-(n_trans - max_len).clamp(min=0) // stride)), 0)
    if windowing == "truncate":
        n_win = n_win.clamp(max=1)
    n_rows = int(n_win.sum())
    user = torch.repeat_interleave(torch.arange(len(n_win), device=dev), n_win, output_size=n_rows)
    w = torch.arange(n_rows, device=dev) - (torch.cumsum(n_win, 0) - n_win)[user]  # 0 = newest
    last = n_trans[user] - w * stride  # (R,) newest transition of the window, 1-based
    col = torch.arange(max_len, device=dev)
    t = last[:, None] - (max_len - 1 - col)[None]  # (R, max_len) transition at each column
    valid = t >= 1
    oldest = (w == n_win[user] - 1) if windowing == "windows" else torch.zeros_like(valid[:, 0])
    trained = valid & ((col >= max_len - stride)[None] | oldest[:, None])
    if windowing == "truncate":
        trained = valid
    at = indptr[user][:, None] + t.clamp(min=1)  # position of the target in the item store
    return user, at, valid, trained


class SeqLoader:
    """Shuffled next-item windows (:class:`SeqBatch`), built once per fit.

    Each epoch shuffles the windows, sorts each group of ``bucket`` consecutive batches by
    sequence length (so a batch holds similar lengths and little padding survives the trim),
    and shuffles the order of the batches. ``bucket=1``: plain shuffled batches. Bucketing is
    not neutral: the loss is a mean over a batch's positions, so a batch of short windows gives
    each of its few positions more weight than a mixed batch would (on Amazon Beauty it makes
    the published SASRec recipe peak lower and overfit sooner: benchmarks/sequential.md, "What
    to know"). ``weight_positions`` (the default) undoes that: each batch carries
    ``loss_scale``, its trained positions over the epoch's mean per batch, which the model's
    loss multiplies its mean by (:class:`~recsys.models.seq_losses.SeqObjective`), so that the
    scaled mean losses weigh every position the same over an epoch, with buckets or without.

    A ``store`` with context gives each batch the context codes of its inputs
    (``SeqBatch.context``), cut from the same positions as the items.
    """

    def __init__(
        self,
        store: RowStore,
        max_len: int,
        pad: int,
        batch_size: int,
        seed: int,
        windowing: str = "windows",
        bucket: int = 32,
        stride: int | None = None,
        weight_positions: bool = True,
    ):
        self.user, self.input, self.target, self.context = _cut(
            store, max_len, pad, windowing, stride
        )
        self.lengths = (self.input != pad).sum(1)
        self.max_len, self.pad, self.batch_size, self.bucket = max_len, pad, batch_size, bucket
        self.sampler = _EpochSeed(seed)
        self.positions = (self.target != pad).sum(1)  # trained positions of each window
        self.weight_positions = weight_positions
        self.mean_positions = self.positions.sum().float() / max(len(self), 1)

    def __len__(self) -> int:
        return -(-len(self.user) // self.batch_size)

    def __iter__(self) -> Iterator[SeqBatch]:
        dev = self.user.device
        g = self.sampler.generator(dev)
        perm = torch.randperm(len(self.user), generator=g, device=dev)
        if self.bucket > 1:
            group = torch.arange(len(perm), device=dev) // (self.batch_size * self.bucket)
            key = group * (self.max_len + 1) + self.lengths[perm]
            perm = perm[torch.sort(key, stable=True).indices]
        starts = torch.arange(0, len(perm), self.batch_size)
        order = torch.randperm(
            len(starts),
            generator=torch.Generator().manual_seed(
                self.sampler.seed * 1_000_003 + self.sampler.epoch
            ),
        )
        for s in starts[order].tolist():
            idx = perm[s : s + self.batch_size]
            width = max(1, int(self.lengths[idx].max()))
            scale = (
                self.positions[idx].sum() / self.mean_positions if self.weight_positions else None
            )
            context = None if self.context is None else self.context[idx, -width:].long()
            yield SeqBatch(
                self.user[idx], self.input[idx, -width:], self.target[idx, -width:], scale, context
            )


# -- the training loader of each batch shape -------------------------------------------------
@dataclass(frozen=True)
class TrainData:
    """What a training loader is built from: the training events, where and how to batch them,
    and what the model declares (``num_negatives``, ``max_len``)."""

    train: Interactions
    device: torch.device
    batch_size: int
    seed: int
    num_negatives: int = 0  # negatives per pair the model wants drawn ("pairs")
    max_len: int | None = None  # the model's window ("sequences")
    options: Mapping[str, Any] = field(default_factory=dict)  # the data config (data.seq_*)
    # (len(train), 3) context codes of the training events in the log's order
    # (recsys.data.context.interaction_context) when the model asked for context, else None
    context: np.ndarray | None = None


def pair_loader(data: TrainData) -> PairLoader:
    """``"pairs"``: every training event as a (user, item[, rating]) pair with negatives."""
    d, dev = data.train, data.device
    return PairLoader(
        torch.as_tensor(d.user, device=dev),
        torch.as_tensor(d.item, device=dev),
        None if d.rating is None else torch.as_tensor(d.rating, device=dev),
        num_items=d.n_items,
        num_negatives=data.num_negatives,
        batch_size=data.batch_size,
        seed=data.seed,
    )


def user_loader(data: TrainData) -> UserLoader:
    """``"users"``: users with their training rows (and their context, when asked for)."""
    return UserLoader(
        RowStore.from_log(data.train, data.device, data.context), data.batch_size, data.seed
    )


def sequence_loader(data: TrainData) -> SeqLoader:
    """``"sequences"``: next-item windows of the model's ``max_len``, cut as the ``data.seq_*``
    options say (validated here), with their inputs' context when asked for."""
    if data.max_len is None:
        raise ConfigError("a model with train_batch 'sequences' must declare its max_len")
    opts = data.options
    windowing = str(opts.get("seq_windowing", "windows"))
    if windowing not in SEQ_WINDOWING:
        raise ConfigError(f"data.seq_windowing must be truncate or windows, got {windowing!r}")
    bucket = opts.get("seq_bucket", 32)
    if not isinstance(bucket, int) or isinstance(bucket, bool) or bucket < 1:
        raise ConfigError(f"data.seq_bucket must be an integer >= 1, got {bucket!r}")
    weight = opts.get("seq_weight_positions", True)
    if not isinstance(weight, bool):
        raise ConfigError(f"data.seq_weight_positions must be true or false, got {weight!r}")
    stride = opts.get("seq_stride")
    if stride is not None and (
        not isinstance(stride, int | float)
        or isinstance(stride, bool)
        or not 1 <= stride <= data.max_len
    ):
        raise ConfigError(
            f"data.seq_stride must be null or an integer in [1, model.max_len = {data.max_len}], "
            f"got {stride!r}"
        )
    return SeqLoader(
        RowStore.from_log(data.train, data.device, data.context),
        max_len=int(data.max_len),
        pad=data.train.n_items,
        batch_size=data.batch_size,
        seed=data.seed,
        windowing=windowing,
        bucket=bucket,
        stride=stride,
        weight_positions=weight,
    )


# the training loader of each ``train_batch`` a model may declare (None, closed form, has none)
TRAIN_LOADERS: dict[str, Callable[[TrainData], Any]] = {
    "pairs": pair_loader,
    "users": user_loader,
    "sequences": sequence_loader,
}
