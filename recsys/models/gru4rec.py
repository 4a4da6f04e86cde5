"""GRU4Rec: a recurrent next-item model (Hidasi et al., ICLR 2016), on the sequence data path.

Item embeddings → dropout → ``n_layers`` GRU layers → a linear map to the embedding size, whose
output at each position scores the next item against the (tied) item table. Trained at every
non-padding position with the ``loss`` axis of :mod:`recsys.models.seq_losses` (``ce`` by
default, as in Hidasi & Czapp's 2023 re-implementations).

Deviations from the paper: whole windows instead of session-parallel mini-batches, no
session-parallel hidden-state carry-over, tied output embeddings. Sequences are packed, so the
padding never enters the recurrence and left-padding a history changes nothing.

Item attributes (``features``, :mod:`recsys.models.features`): an item's vector, at the input and
in the tied output layer, is its id embedding (items with a training event only) plus its pooled
attribute embedding, so a cold or new item is scored from its attributes
(:meth:`GRU4Rec.new_item_vectors`). With ``features: null`` no attribute module exists and the
computation is the id-only one.

Event context (``features.context``: hour of day, weekday, gap since the previous event,
:mod:`recsys.data.context`), an addition to the paper as in SASRec: one embedding table per field,
their sum added to the item embedding of each input step before the input dropout; the history
scored at evaluation carries its events' context too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
from recsys.models.seq_losses import SeqObjective
from recsys.models.seq_padding import last_state_by_length


class GRU4Rec(Recommender):
    train_batch = "sequences"
    scores_history = True
    represents_users = True
    uses_features = True
    scores_new_items = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        max_len: int = 50,
        embedding_size: int = 64,
        hidden_size: int = 128,
        n_layers: int = 1,
        dropout: float = 0.2,
        init_std: float = 0.02,
        loss: str = "ce",
        num_negatives: int = 1,
        gbce_t: float = 0.75,
        ce_chunk: int = 1 << 20,
        shared_negatives: bool = False,
        features: dict[str, Any] | None = None,
        feature_schema: dict[str, Any] | None = None,
    ):
        """Hyper-parameters: configs/model/gru4rec.yaml; ``feature_schema``: the dataset's
        feature fields (injected by ``build_model``)."""
        super().__init__(num_users, num_items)
        require(max_len >= 1, "max_len", max_len, "an integer >= 1")
        require(embedding_size >= 1, "embedding_size", embedding_size, "an integer >= 1")
        require(hidden_size >= 1, "hidden_size", hidden_size, "an integer >= 1")
        require(n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
        require(0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
        require(init_std > 0, "init_std", init_std, "> 0")
        self.max_len, self.pad = int(max_len), num_items
        self.objective = SeqObjective(loss, num_negatives, gbce_t, ce_chunk, shared_negatives)
        self.item = nn.Embedding(num_items + 1, embedding_size, padding_idx=num_items)
        nn.init.normal_(self.item.weight, std=init_std)
        with torch.no_grad():
            self.item.weight[num_items].zero_()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, batch_first=True)
        self.proj = nn.Linear(hidden_size, embedding_size)
        # after every id-only module: the id-only initialisation draws are unchanged
        self.feats, self.item_attrs = sequence_item_features(
            "GRU4Rec", features, feature_schema, embedding_size, num_items, init_std
        )
        # one table per context field (code 0: none, a zero row without gradient)
        self.context_emb = context_tables(self.feats.context, embedding_size, init_std)

    def set_features(self, features: Any) -> None:
        if self.item_attrs is not None:
            self.item_attrs.load(features.item, features.item_seen)

    def item_table(self) -> Tensor:
        """(I + 1, d) the items' input and output table: the id table, plus with item features
        the attribute part (:func:`~recsys.models.features.entity_table`, id dropout drawn once
        for input and output); the last row is padding."""
        return with_item_attributes(
            self.item.weight, self.pad, self.item_attrs, self.feats, self.training
        )

    @property
    def item_weight(self) -> Tensor:
        """(I, d) the output layer: embeddings of the real items."""
        return self.item.weight[: self.num_items]

    def encode(
        self, seq: Tensor, table: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        """(B, L) left-padded ids → (B, L, d) states (zero at padding); ``table``: the item
        table to embed with (:meth:`item_table`), default the id table; ``context``: (B, L, 3)
        each position's context codes (``SeqBatch.context``), required by a model with context
        and ignored by one without."""
        B, L = seq.shape
        real = seq != self.pad
        lengths = real.sum(1)
        n_pad = (L - lengths)[:, None]
        cols = torch.arange(L, device=seq.device)[None]
        gather = (cols + n_pad).clamp(max=L - 1)  # (B, L) left → right-padded positions
        after = cols >= lengths[:, None]  # (B, L) right padding
        right = seq.gather(1, gather).masked_fill(after, self.pad)  # (B, L) right-padded
        emb = self.item(right) if table is None else F.embedding(right, table, self.pad)
        if self.context_emb:
            if context is None:
                raise no_context_error("GRU4Rec")
            # the context moves with its items; code 0 (none) at the right padding
            codes = context.gather(1, gather[..., None].expand(-1, -1, context.shape[-1]))
            extra = embed_context(
                self.context_emb, codes.masked_fill(after[..., None], 0), "GRU4Rec"
            )
            emb = emb + extra  # (B, L, e)
        packed = pack_padded_sequence(
            self.drop(emb),  # (B, L, e)
            lengths.clamp(min=1).cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        out, _ = self.gru(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=L)[0]  # (B, L, H)
        out = self.proj(self.drop(out))
        left = out.gather(1, (cols - n_pad).clamp(min=0)[..., None].expand(-1, -1, out.shape[-1]))
        return left * real[..., None]

    def loss(self, batch: SeqBatch) -> Tensor:
        if self.item_attrs is None:
            h = self.encode(batch.input, context=batch.context)  # (B, L, d)
            return self.objective.next_item(
                h, batch.target, self.pad, self.item_weight, batch.loss_scale
            )
        table = self.item_table()  # (I + 1, d)
        h = self.encode(batch.input, table, batch.context)
        return self.objective.next_item(
            h, batch.target, self.pad, table[: self.pad], batch.loss_scale
        )

    def _states(self, users: UserBatch, table: Tensor | None) -> Tensor:
        seq = users.padded(self.max_len, self.pad)
        if not self.context_emb:
            return last_state_by_length(seq, self.pad, lambda s: self.encode(s, table))
        if users.context is None:
            raise no_context_error("GRU4Rec")
        return last_state_by_length(
            seq,
            self.pad,
            lambda s, c: self.encode(s, table, c),
            context=users.padded_context(self.max_len),
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) final GRU state over each user's history."""
        return self._states(users, None if self.item_attrs is None else self.item_table())

    def score(self, users: UserBatch) -> Tensor:
        if self.item_attrs is None:
            return self.user_representation(users) @ self.item_weight.T  # (B, I)
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
        return new_item_vectors_of("GRU4Rec", self.item_attrs, attrs)
