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


def trim_padding(seq: Tensor, pad: int) -> Tensor:
    """Drop the leading columns that are padding in every row (keeps at least one column)."""
    real_cols = (seq != pad).any(0)
    if not bool(real_cols.any()):
        return seq[:, -1:]
    first = int(real_cols.int().argmax())
    return seq[:, first:]


def last_state_by_length(
    seq: Tensor, pad: int, encode: Callable[[Tensor], Tensor], group: int = 256
) -> Tensor:
    """(B, d) ``encode(rows)[:, -1]`` for left-padded rows ``seq`` (B, L), computed over groups
    of ``group`` rows of similar length, each trimmed of its all-padding columns.

    Padding does not change a row's state (the encoders mask it), so the values equal one pass
    over the whole batch; a batch mixing a few long histories with many short ones then costs
    about its mean length instead of its longest. Traced/exported graphs take the single pass.
    """
    n = seq.shape[0]
    if n <= group or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return encode(trim_padding(seq, pad))[:, -1]
    order = torch.argsort((seq != pad).sum(1), stable=True)
    out: Tensor | None = None
    for start in range(0, n, group):
        rows = order[start : start + group]
        h = encode(trim_padding(seq[rows], pad))[:, -1]
        if out is None:
            out = h.new_empty((n, h.shape[1]))
        out[rows] = h
    assert out is not None
    return out
