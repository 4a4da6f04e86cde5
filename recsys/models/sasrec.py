"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over a user's ``max_len`` most recent items with learned positional
embeddings; the hidden state at each position scores the next item against the item embeddings
(tied input/output table). Trained at every non-padding position of every window
(:class:`~recsys.data.batches.SeqBatch`) with the loss chosen in ``loss`` (see
:mod:`recsys.models.seq_losses`): ``bce`` with one negative is the paper; ``ce`` is SASRec+
(Klenitskiy & Vasilev, RecSys 2023); ``sampled_ce``; ``gbce`` is gSASRec (Petrov & Macdonald,
RecSys 2023).

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

from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender
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
    settings_class = SASRecSettings
    retired_keys = RETIRED

    def __init__(self, num_users: int, num_items: int, **settings: Any):
        """``settings``: the fields of :class:`SASRecSettings` (configs/model/sasrec.yaml)."""
        super().__init__(num_users, num_items)
        s = SASRecSettings(**settings)
        self.max_len, self.pad = int(s.max_len), num_items
        self.objective = s.objective()
        self.encoder = TransformerEncoder(num_items, 1, s)

    def loss(self, batch: SeqBatch) -> Tensor:
        table = self.encoder.table()  # one item-dropout mask for input and output
        h = self.encoder(batch.input, causal=True, table=table)  # (B, L, d)
        return self.objective.next_item(
            h, batch.target, self.pad, table[: self.pad], batch.loss_scale
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) final hidden state: the encoder's state after each user's newest item."""
        seq = users.padded(self.max_len, self.pad)
        return last_state_by_length(seq, self.pad, lambda s: self.encoder(s, causal=True))

    def score(self, users: UserBatch) -> Tensor:
        return self.user_representation(users) @ self.encoder.item_weight.T  # (B, I)
