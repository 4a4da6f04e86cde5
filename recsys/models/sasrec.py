"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over a user's ``max_len`` most recent items with learned positional
embeddings; the hidden state at each position scores the next item against the item embeddings
(tied input/output table). Trained at every non-padding position of every window
(:class:`~recsys.data.batches.SeqBatch`) with the loss chosen in ``loss`` (see
:mod:`recsys.models.seq_losses`): ``bce`` with one negative is the paper; ``ce`` is SASRec+
(Klenitskiy & Vasilev, RecSys 2023); ``sampled_ce``; ``gbce`` is gSASRec (Petrov & Macdonald,
RecSys 2023).

Event context (``features.context``: hour of day, weekday, gap since the previous event,
:mod:`recsys.data.context`), an addition to the paper: one embedding table per field, their sum
added to the item embedding of each input position; the history scored at evaluation carries its
events' context too. (TiSASRec, Li et al. WSDM 2020, puts time intervals inside the attention
instead; here they are bucket embeddings at the input, like the item attributes.)

History-candidate attribute match (``features.history_match``, for cold items), an addition:
``score(u, i) = h_u · v_i + Σ_f α_f x_f(i) · c_f(u)``, where ``c_f(u)`` is the discounted sum of
the attribute vectors of the history's items (:class:`~recsys.models.features.HistoryMatch`):
attr-kNN's content signal inside the model, with learned weights. Trained with full softmax
(``ce``) at every position from the prefix up to it; ``user_representation`` and
``item_vectors`` carry it as extra coordinates (``[h, α ⊙ c] · [v, x]``), so dot-product
scoring, new products and the exported vectors include it. ``features.negatives: seen`` leaves
the items without training events out of the training softmax.

Deviations from the paper: positions are counted back from the most recent item (the paper's
left-padded layout gives the same thing); GELU or ReLU feed-forward (``activation``); standard
pre-LN blocks (``norm_first``, the default) whose residuals start from the raw input, where the
paper's code starts them from the normalised query, or post-LN blocks (``norm_first: false``, as
in RecBole); ``item_dropout`` and ``scale_embeddings`` (the paper's code) are options. The
encoder is :class:`~recsys.models.transformer.TransformerEncoder`, shared with BERT4Rec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender
from recsys.models.features import (
    HistoryMatch,
    context_tables,
    embed_context,
    new_item_vectors_of,
    no_context_error,
    sequence_item_features,
    with_item_attributes,
)
from recsys.models.seq_losses import full_ce_match
from recsys.models.seq_padding import last_state_by_length
from recsys.models.transformer import RETIRED, TransformerEncoder, TransformerSettings


@dataclass(frozen=True, kw_only=True)
class SASRecSettings(TransformerSettings):
    """SASRec's hyper-parameters: the family's, pre-LN by default with the paper code's epsilon."""

    norm_first: bool = True
    layer_norm_eps: float = 1e-8


class SASRec(Recommender):
    train_batch = "sequences"
    scores_history = True
    represents_users = True
    uses_features = True
    scores_new_items = True
    settings_class = SASRecSettings
    retired_keys = RETIRED

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_schema: dict[str, Any] | None = None,
        **settings: Any,
    ):
        """``settings``: the fields of :class:`SASRecSettings` (configs/model/sasrec.yaml);
        ``feature_schema``: the dataset's feature fields (injected by ``build_model``)."""
        super().__init__(num_users, num_items)
        s = SASRecSettings(**settings)
        self.max_len, self.pad = int(s.max_len), num_items
        self.objective = s.objective()
        self.encoder = TransformerEncoder(num_items, 1, s)
        self.feats, self.item_attrs = sequence_item_features(
            "SASRec",
            s.features,
            feature_schema,
            s.hidden_size,
            num_items,
            s.init_std,
            history_match=True,
        )
        # one table per context field (code 0, padding, is a zero row without gradient); built
        # after the encoder so the id-only initialisation draws are unchanged
        self.context_emb = context_tables(self.feats.context, s.hidden_size, s.init_std)
        self.match: HistoryMatch | None = None
        if self.feats.history_match or self.feats.negatives != "all":
            if self.objective.loss != "ce":
                key = "history_match" if self.feats.history_match else "negatives"
                raise ConfigError(
                    f"model.features.{key}: SASRec trains it with the full softmax only "
                    f"(loss=ce), got loss={self.objective.loss}"
                )
        if self.feats.history_match:
            assert self.item_attrs is not None
            self.match = HistoryMatch(self.item_attrs, self.feats.history_match_init)

    def set_features(self, features: Any) -> None:
        if self.item_attrs is not None:
            self.item_attrs.load(features.item, features.item_seen)

    def item_table(self) -> Tensor:
        """(I + 1, d) the items' input and output table for one batch: the id table (one
        item-dropout mask for input and output) plus, with item features, the attribute part
        (:func:`~recsys.models.features.entity_table`); the last row is padding."""
        return with_item_attributes(
            self.encoder.table(), self.pad, self.item_attrs, self.feats, self.training
        )

    def context_embedding(self, context: Tensor | None) -> Tensor | None:
        """(B, L, d) the summed embeddings of the used context fields of (B, L, 3) codes
        (``SeqBatch.context``), or None for a model without context. A model with context
        refuses a batch without it (a history's events need their times)."""
        return embed_context(self.context_emb, context, "SASRec")

    def loss(self, batch: SeqBatch) -> Tensor:
        table = self.item_table()  # (I + 1, d)
        extra = self.context_embedding(batch.context)  # (B, L, d) or None
        h = self.encoder(batch.input, causal=True, table=table, extra=extra)  # (B, L, d)
        if self.match is None and self.feats.negatives == "all":
            return self.objective.next_item(
                h, batch.target, self.pad, table[: self.pad], batch.loss_scale
            )
        return self._loss_with_attributes(batch, h, table)

    def _loss_with_attributes(self, batch: SeqBatch, h: Tensor, table: Tensor) -> Tensor:
        """Full-softmax CE at the real positions with the history match added to the logits
        (``history_match``) and/or over the items seen in training only (``negatives: seen``)."""
        assert self.item_attrs is not None
        real = batch.target != self.pad  # (B, L)
        hr, target, weight = h[real], batch.target[real], table[: self.pad]
        keep = None
        if self.feats.negatives == "seen":
            keep = torch.nonzero(self.item_attrs.seen > 0).squeeze(1)  # (I',)
            where = torch.full((self.pad,), -1, dtype=torch.long, device=target.device)
            where[keep] = torch.arange(len(keep), device=target.device)
            target, weight = where[target], weight.index_select(0, keep)
            if bool((target < 0).any()):
                raise ConfigError("a training target has no training event (item_seen is wrong)")
        if self.match is None:
            loss = self.objective(hr, target, weight)
        else:
            c = self.match.history(self.item_attrs, batch.input)[real]  # (N, D)
            x = self.match.item_matrix(self.item_attrs, seen_only=keep is not None)  # (I or I', D)
            loss = full_ce_match(hr, target, weight, c, x, self.objective.ce_chunk)
        return loss if batch.loss_scale is None else loss * batch.loss_scale

    def _states(self, users: UserBatch, table: Tensor) -> Tensor:
        seq = users.padded(self.max_len, self.pad)
        if not self.context_emb:
            return last_state_by_length(
                seq, self.pad, lambda s: self.encoder(s, causal=True, table=table, last_only=True)
            )
        if users.context is None:
            raise no_context_error("SASRec")
        return last_state_by_length(
            seq,
            self.pad,
            lambda s, c: self.encoder(
                s, causal=True, table=table, extra=self.context_embedding(c), last_only=True
            ),
            context=users.padded_context(self.max_len),
        )

    def _match_part(self, users: UserBatch) -> Tensor:
        """(B, D) ``α ⊙ c(u)`` of the users' windows (``history_match``)."""
        assert self.match is not None and self.item_attrs is not None
        return self.match.user_part(self.item_attrs, users.padded(self.max_len, self.pad))

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) final hidden state: the encoder's state after each user's newest item; with
        ``history_match``, (B, d + D) that state and the history's weighted attribute sums."""
        h = self._states(users, self.item_table())
        return h if self.match is None else torch.cat([h, self._match_part(users)], 1)

    def score(self, users: UserBatch) -> Tensor:
        table = self.item_table()
        s = self._states(users, table) @ table[: self.pad].T  # (B, I)
        if self.match is not None:
            assert self.item_attrs is not None
            s = s + self.match.scores(self.item_attrs, self._match_part(users))
        return s

    def item_vectors(self) -> Tensor:
        """(I, d) the output layer: each item's vector (id and attributes); with
        ``history_match``, (I, d + D) that vector and the item's attribute vector ``x(i)``."""
        v = self.item_table()[: self.pad]
        if self.match is None:
            return v
        assert self.item_attrs is not None
        return torch.cat([v, self.match.item_rows(self.item_attrs)], 1)

    def new_item_vectors(self, attrs: Any) -> Tensor:
        """(m, d) output vectors of new items from their attributes alone (a
        :class:`~recsys.data.features.FeatureTable` of this model's item fields), scored like
        catalogue items: ``user_representation @ new_item_vectors.T`` (with ``history_match``,
        (m, d + D): the item's attribute vector ``x`` too)."""
        v = new_item_vectors_of("SASRec", self.item_attrs, attrs)
        if self.match is None:
            return v
        assert self.item_attrs is not None
        codes = [
            torch.as_tensor(np.asarray(attrs.codes[n]), dtype=torch.long, device=v.device)
            for n in self.item_attrs.cat_names
        ]
        return torch.cat([v, self.match.item_rows(self.item_attrs, codes)], 1)
