"""The few batch shapes models consume (built by the loaders of :mod:`recsys.data.loaders`).

Shapes (``B`` users or pairs per batch, ``I`` items, ``L`` sequence length):

- :class:`PairBatch` — (user, item) training pairs with sampled negatives: MF, NCF.
- :class:`UserBatch` — users with their history (each user's items in time order, concatenated):
  the input of every ``score`` call, and the training batch of autoencoders. ``dense()`` gives the
  (B, I) multi-hot rows, ``padded()`` the (B, L) most recent items for sequence models.
- :class:`EvalBatch` — a :class:`UserBatch` plus the held-out target items of those users.
- :class:`SeqBatch` — left-padded (B, L) item sequences and their next items: sequence models.

Sequence batches and user histories may carry each event's context (hour of day, weekday, gap
since the previous event: :mod:`recsys.data.context`) as (..., 3) int64 codes beside the items,
when the model asks for it and the log has a clock; otherwise their ``context`` is None.

Batches are frozen dataclasses of tensors with ``to(device)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


def _to(obj, device: torch.device):
    """Copy of a batch dataclass with every tensor field moved to ``device``."""
    kwargs = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
        elif hasattr(v, "to") and hasattr(v, "__dataclass_fields__"):
            v = v.to(device)
        kwargs[f.name] = v
    return type(obj)(**kwargs)


@dataclass(frozen=True)
class PairBatch:
    user: Tensor  # (B,) int64
    item: Tensor  # (B,) int64 positive items
    neg: Tensor | None = None  # (B, N) int64 sampled negatives (never a training positive)
    rating: Tensor | None = None  # (B,) float32 explicit values, where the data has them

    def to(self, device: torch.device) -> PairBatch:
        return _to(self, device)


@dataclass(frozen=True)
class UserBatch:
    user: Tensor  # (B,) int64; -1 for a history that belongs to no known user
    items: Tensor  # (nnz,) int64 history items, user by user, oldest first
    offsets: Tensor  # (B + 1,) int64: user b's items are items[offsets[b]:offsets[b + 1]]
    # (nnz, 3) int64 context codes (hour, weekday, gap: recsys.data.context) of each history
    # item's event, aligned with ``items``; None when the model asked for no context
    context: Tensor | None = None

    def to(self, device: torch.device) -> UserBatch:
        return _to(self, device)

    def __len__(self) -> int:
        return len(self.user)

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def rows(self) -> Tensor:
        """(nnz,) the batch row of each history item."""
        return torch.repeat_interleave(
            torch.arange(len(self.user), device=self.items.device),
            self.lengths,
            output_size=len(self.items),
        )

    def dense(self, num_items: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, I) multi-hot history rows, built on the batch's device."""
        out = torch.zeros(len(self.user), num_items, dtype=dtype, device=self.items.device)
        out[self.rows(), self.items] = 1
        return out

    def _recent(self, max_len: int) -> tuple[Tensor, Tensor, Tensor]:
        """Where the ``max_len`` most recent items of each user go in a (B, max_len) left-padded
        layout: (row, column) of each kept entry and the kept entries' mask over ``items``."""
        rows = self.rows()
        # position counted from the user's most recent item: 0 = newest
        from_end = self.offsets[1:][rows] - 1 - torch.arange(len(self.items), device=rows.device)
        keep = from_end < max_len
        return rows[keep], max_len - 1 - from_end[keep], keep

    def padded(self, max_len: int, pad: int) -> Tensor:
        """(B, max_len) each user's ``max_len`` most recent items, left-padded with ``pad``."""
        r, c, keep = self._recent(max_len)
        out = torch.full((len(self.user), max_len), pad, dtype=torch.long, device=self.items.device)
        out[r, c] = self.items[keep]
        return out

    def padded_context(self, max_len: int) -> Tensor:
        """(B, max_len, 3) the context codes of :meth:`padded`'s items, position by position
        (0 at padding)."""
        if self.context is None:
            raise ValueError("this batch carries no context (UserBatch.context is None)")
        r, c, keep = self._recent(max_len)
        out = self.context.new_zeros((len(self.user), max_len, self.context.shape[1]))
        out[r, c] = self.context[keep]
        return out

    @staticmethod
    def from_lists(users: list[int], histories: list[list[int]]) -> UserBatch:
        """Build a batch from Python lists (small inputs: serving, tests)."""
        lengths = torch.tensor([len(h) for h in histories], dtype=torch.long)
        offsets = torch.zeros(len(histories) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        items = torch.tensor([i for h in histories for i in h], dtype=torch.long)
        return UserBatch(torch.tensor(users, dtype=torch.long), items, offsets)


@dataclass(frozen=True)
class SeqBatch:
    """Training windows of item sequences, left-padded with ``pad`` (= ``num_items``).

    ``target[:, j]`` is the item that followed ``input[:, j]`` in the user's history, or ``pad``
    where ``input`` is padding or the position is context only (overlapping windows). Leading
    columns that are padding in every row are trimmed, so ``L <= max_len``.
    """

    user: Tensor  # (B,) int64 the user of each row
    input: Tensor  # (B, L) int64 items, oldest first, left-padded
    target: Tensor  # (B, L) int64 next item of each input position, pad where not trained
    # () float: the model's loss multiplies its batch mean by it (the loader's
    # ``weight_positions``: every position weighs the same over an epoch), or None
    loss_scale: Tensor | None = None
    # (B, L, 3) int64 context codes (hour, weekday, gap: recsys.data.context) of each input
    # position's event, 0 at padding; None when the model asked for no context
    context: Tensor | None = None

    def to(self, device: torch.device) -> SeqBatch:
        return _to(self, device)

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class EvalBatch:
    users: UserBatch  # model input: the users and the history known at this stage
    target_rows: Tensor  # (nnz_t,) int64 batch row of each held-out item
    target_items: Tensor  # (nnz_t,) int64 held-out items
    n_rel: Tensor  # (B,) int64 distinct held-out items of each user (repeats counted once)
    target_ratings: Tensor | None = None  # (nnz_t,) float32 their ratings, where the data has them

    def to(self, device: torch.device) -> EvalBatch:
        return _to(self, device)
