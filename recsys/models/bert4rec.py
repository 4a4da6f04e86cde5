"""BERT4Rec: bidirectional transformer trained by masked-item prediction (Sun et al., CIKM 2019).

Training: each real item of a window is replaced by the mask token with probability
``mask_prob`` (a window that drew no mask gets its most recent item masked, which is also the
situation at inference), and the model predicts the original items at the masked positions with
the chosen ``loss`` (:mod:`recsys.models.seq_losses`; the paper uses ``ce``). Inference: the
``max_len - 1`` most recent items followed by the mask token; the output at the mask scores the
next item.

Deviations: the output layer is the tied item table without the paper's extra projection and
bias; a training window is the ``target`` row of a :class:`~recsys.data.batches.SeqBatch` (so a
user's very first item is never a prediction target); the paper's 10% random / 10% unchanged
replacement of masked items is not used. The encoder is
:class:`~recsys.models.transformer.TransformerEncoder`, shared with SASRec (post-LN blocks by
default, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.seq_padding import last_state_by_length
from recsys.models.transformer import RETIRED, TransformerEncoder, TransformerSettings


@dataclass(frozen=True, kw_only=True)
class BERT4RecSettings(TransformerSettings):
    """BERT4Rec's hyper-parameters: the family's, post-LN by default with BERT's epsilon, and
    the masking rate."""

    norm_first: bool = False
    layer_norm_eps: float = 1e-12
    mask_prob: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.mask_prob < 1, "mask_prob", self.mask_prob, "in (0, 1)")


class BERT4Rec(Recommender):
    train_batch = "sequences"
    scores_history = True
    represents_users = True
    settings_class = BERT4RecSettings
    retired_keys = RETIRED

    def __init__(self, num_users: int, num_items: int, **settings: Any):
        """``settings``: the fields of :class:`BERT4RecSettings` (configs/model/bert4rec.yaml)."""
        super().__init__(num_users, num_items)
        s = BERT4RecSettings(**settings)
        self.max_len, self.mask_prob = int(s.max_len), float(s.mask_prob)
        self.pad, self.mask_id = num_items, num_items + 1
        self.objective = s.objective()
        self.encoder = TransformerEncoder(num_items, 2, s)

    def mask(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """(input with mask tokens, (B, L) bool masked positions) for left-padded ``seq``."""
        real = seq != self.pad
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_prob) & real
        none = ~masked.any(1) & real[:, -1]
        masked[:, -1] |= none  # rows without a mask: mask the most recent item
        return seq.masked_fill(masked, self.mask_id), masked

    def loss(self, batch: SeqBatch) -> Tensor:
        seq = batch.target  # (B, L) the window's items, left-padded
        inp, masked = self.mask(seq)
        table = self.encoder.table()  # one item-dropout mask for input and output
        h = self.encoder(inp, causal=False, table=table)[masked]  # (N, d) at the masked positions
        return self.objective(h, seq[masked], table[: self.pad], batch.loss_scale)

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) hidden state at the mask token appended after each user's history."""
        hist = users.padded(self.max_len - 1, self.pad)
        mask_col = torch.full_like(hist[:, :1], self.mask_id)
        seq = torch.cat([hist, mask_col], 1)  # (B, L)
        return last_state_by_length(seq, self.pad, lambda s: self.encoder(s, causal=False))

    def score(self, users: UserBatch) -> Tensor:
        return self.user_representation(users) @ self.encoder.item_weight.T  # (B, I)
