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

Item attributes (``features``, :mod:`recsys.models.features`) as in SASRec: an item's vector, at
the input and in the tied output layer, is its id embedding (items with a training event only)
plus its pooled attribute embedding; the padding and mask tokens stay id rows. A cold or new item
is scored from its attributes (:meth:`BERT4Rec.new_item_vectors`). With ``features: null`` no
attribute module exists and the computation is the id-only one.

Event context (``features.context``: hour of day, weekday, gap since the previous event,
:mod:`recsys.data.context`), an addition to the paper as in SASRec: one embedding table per field,
their sum added to the item (or mask) embedding of each position. A masked training position keeps
its event's context (the model learns from the item's time what was there); the mask token
appended at scoring has context 0 (none): the next event's time is not known. A training window's
newest item also has context 0, because a :class:`~recsys.data.batches.SeqBatch` carries the
context of its inputs, which end one event before its targets: masked, that position is the
inference situation exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.features import (
    context_tables,
    embed_context,
    new_item_vectors_of,
    no_context_error,
    sequence_item_features,
    with_item_attributes,
)
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
    uses_features = True
    scores_new_items = True
    settings_class = BERT4RecSettings
    retired_keys = RETIRED

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_schema: dict[str, Any] | None = None,
        **settings: Any,
    ):
        """``settings``: the fields of :class:`BERT4RecSettings` (configs/model/bert4rec.yaml);
        ``feature_schema``: the dataset's feature fields (injected by ``build_model``)."""
        super().__init__(num_users, num_items)
        s = BERT4RecSettings(**settings)
        self.max_len, self.mask_prob = int(s.max_len), float(s.mask_prob)
        self.pad, self.mask_id = num_items, num_items + 1
        self.objective = s.objective()
        self.encoder = TransformerEncoder(num_items, 2, s)
        self.feats, self.item_attrs = sequence_item_features(
            "BERT4Rec", s.features, feature_schema, s.hidden_size, num_items, s.init_std
        )
        # one table per context field (code 0: none, a zero row without gradient); built after
        # the encoder so the id-only initialisation draws are unchanged
        self.context_emb = context_tables(self.feats.context, s.hidden_size, s.init_std)

    def set_features(self, features: Any) -> None:
        if self.item_attrs is not None:
            self.item_attrs.load(features.item, features.item_seen)

    def item_table(self) -> Tensor:
        """(I + 2, d) the items' input and output table for one batch: the id table (one
        item-dropout mask for input and output) plus, with item features, the attribute part
        (:func:`~recsys.models.features.entity_table`); the last two rows are padding and mask."""
        return with_item_attributes(
            self.encoder.table(), self.pad, self.item_attrs, self.feats, self.training
        )

    def mask(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """(input with mask tokens, (B, L) bool masked positions) for left-padded ``seq``."""
        real = seq != self.pad
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_prob) & real
        none = ~masked.any(1) & real[:, -1]
        masked[:, -1] |= none  # rows without a mask: mask the most recent item
        return seq.masked_fill(masked, self.mask_id), masked

    def target_context(self, batch: SeqBatch) -> Tensor | None:
        """(B, L, 3) the context codes of ``batch.target``'s events, or None for a model without
        context: ``target[:, j]`` is the event after ``input[:, j]``, so its codes are
        ``context[:, j + 1]``; the newest target's are not in the batch (0, none), nor are
        padding's."""
        if not self.context_emb:
            return None
        if batch.context is None:
            raise no_context_error("BERT4Rec")
        ctx = torch.cat([batch.context[:, 1:], torch.zeros_like(batch.context[:, :1])], 1)
        return ctx.masked_fill((batch.target == self.pad)[..., None], 0)

    def loss(self, batch: SeqBatch) -> Tensor:
        seq = batch.target  # (B, L) the window's items, left-padded
        extra = embed_context(self.context_emb, self.target_context(batch), "BERT4Rec")
        inp, masked = self.mask(seq)
        table = self.item_table()  # one item-dropout mask for input and output
        h = self.encoder(inp, causal=False, table=table, extra=extra)  # (B, L, d)
        h = h[masked]  # (N, d) at the masked positions
        return self.objective(h, seq[masked], table[: self.pad], batch.loss_scale)

    def _states(self, users: UserBatch, table: Tensor | None) -> Tensor:
        hist = users.padded(self.max_len - 1, self.pad)
        mask_col = torch.full_like(hist[:, :1], self.mask_id)
        seq = torch.cat([hist, mask_col], 1)  # (B, L)
        if not self.context_emb:
            return last_state_by_length(
                seq, self.pad, lambda s: self.encoder(s, causal=False, table=table)
            )
        if users.context is None:
            raise no_context_error("BERT4Rec")
        ctx = users.padded_context(self.max_len - 1)  # (B, L - 1, 3)
        ctx = torch.cat([ctx, torch.zeros_like(ctx[:, :1])], 1)  # the mask: no context
        return last_state_by_length(
            seq,
            self.pad,
            lambda s, c: self.encoder(
                s, causal=False, table=table, extra=embed_context(self.context_emb, c, "BERT4Rec")
            ),
            context=ctx,
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) hidden state at the mask token appended after each user's history."""
        return self._states(users, None if self.item_attrs is None else self.item_table())

    def score(self, users: UserBatch) -> Tensor:
        if self.item_attrs is None:
            return self.user_representation(users) @ self.encoder.item_weight.T  # (B, I)
        table = self.item_table()
        return self._states(users, table) @ table[: self.pad].T

    def item_vectors(self) -> Tensor:
        """(I, d) the output layer: each item's vector (id and attributes)."""
        return self.item_table()[: self.pad]

    def new_item_vectors(self, attrs: Any) -> Tensor:
        """(m, d) output vectors of new items from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's item fields, from
        ``FeatureTable.encode_rows``), scored like catalogue items:
        ``user_representation @ new_item_vectors.T``."""
        return new_item_vectors_of("BERT4Rec", self.item_attrs, attrs)
