"""Left-padded item sequences, the layout the sequence models (SASRec, BERT4Rec, GRU4Rec) share.

Sequences are ``(B, L)`` item ids **left-padded** with ``pad`` (= ``num_items``), so the most
recent item is always at column ``L - 1``. Padding never changes a row's result (the encoders
mask or pack it), so a batch may be trimmed of its all-padding columns
(:func:`trim_padding`) and long batches are encoded in groups of similar length
(:func:`last_state_by_length`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _first_real_column(seq: Tensor, pad: int) -> int:
    """The first column that is not padding in every row (the last column if none is)."""
    real_cols = (seq != pad).any(0)
    if not bool(real_cols.any()):
        return seq.shape[1] - 1
    return int(real_cols.int().argmax())


def trim_padding(seq: Tensor, pad: int) -> Tensor:
    """Drop the leading columns that are padding in every row (keeps at least one column)."""
    return seq[:, _first_real_column(seq, pad) :]


def last_state_by_length(
    seq: Tensor,
    pad: int,
    encode: Callable[..., Tensor],
    group: int = 256,
    context: Tensor | None = None,
) -> Tensor:
    """(B, d) ``encode(rows)[:, -1]`` for left-padded rows ``seq`` (B, L), computed over groups
    of ``group`` rows of similar length, each trimmed of its all-padding columns.

    ``context``: (B, L, ...) values aligned with ``seq`` position by position (each event's
    context codes); the same rows and columns of it are passed as ``encode(rows, context_rows)``.

    Padding does not change a row's state (the encoders mask it), so the values equal one pass
    over the whole batch; a batch mixing a few long histories with many short ones then costs
    about its mean length instead of its longest. Traced/exported graphs take the single pass.
    """

    def run(s: Tensor, c: Tensor | None) -> Tensor:
        if c is None:
            return encode(trim_padding(s, pad))[:, -1]
        first = _first_real_column(s, pad)
        return encode(s[:, first:], c[:, first:])[:, -1]

    n = seq.shape[0]
    if n <= group or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return run(seq, context)
    order = torch.argsort((seq != pad).sum(1), stable=True)
    out: Tensor | None = None
    for start in range(0, n, group):
        rows = order[start : start + group]
        h = run(seq[rows], None if context is None else context[rows])
        if out is None:
            out = h.new_empty((n, h.shape[1]))
        out[rows] = h
    assert out is not None
    return out
