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
replacement of masked items is not used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.layers import last_state_by_length
from recsys.models.sasrec import check_transformer_args, transformer_encoder
from recsys.models.seq_losses import sequence_loss


class BERT4Rec(Recommender):
    train_batch = "sequences"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        max_len: int = 50,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        activation: str = "gelu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        mask_prob: float = 0.2,
        loss: str = "ce",
        num_negatives: int = 1,
        gbce_t: float = 0.75,
        ce_chunk: int = 1 << 20,
        shared_negatives: bool = False,
        scale_embeddings: bool = False,
        init: str = "normal",
        residual_norm: bool = False,
        item_dropout: float = 0.0,
        null_attention: str = "none",
    ):
        super().__init__(num_users, num_items)
        check_transformer_args(
            max_len,
            hidden_size,
            n_layers,
            n_heads,
            inner_size,
            dropout,
            attn_dropout,
            activation,
            loss,
            num_negatives,
            gbce_t,
        )
        require(0 < mask_prob < 1, "mask_prob", mask_prob, "in (0, 1)")
        require(ce_chunk >= 1, "ce_chunk", ce_chunk, "an integer >= 1")
        self.max_len, self.loss_name, self.num_negatives = int(max_len), loss, int(num_negatives)
        self.gbce_t, self.ce_chunk, self.mask_prob = float(gbce_t), int(ce_chunk), float(mask_prob)
        self.shared_negatives = bool(shared_negatives)
        self.pad, self.mask_id = num_items, num_items + 1
        # the constructor's own arguments (locals) carry the encoder's hyper-parameters
        self.encoder = transformer_encoder(num_items, 2, locals())

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
        return sequence_loss(
            h,
            seq[masked],
            table[: self.pad],
            self.loss_name,
            self.num_negatives,
            self.gbce_t,
            self.ce_chunk,
            shared_negatives=self.shared_negatives,
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) hidden state at the mask token appended after each user's history."""
        hist = users.padded(self.max_len - 1, self.pad)
        mask_col = torch.full_like(hist[:, :1], self.mask_id)
        seq = torch.cat([hist, mask_col], 1)  # (B, L)
        return last_state_by_length(seq, self.pad, lambda s: self.encoder(s, causal=False))

    def score(self, users: UserBatch) -> Tensor:
        return self.user_representation(users) @ self.encoder.item_weight.T  # (B, I)
