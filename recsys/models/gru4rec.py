"""GRU4Rec: a recurrent next-item model (Hidasi et al., ICLR 2016), on the sequence data path.

Item embeddings → dropout → ``n_layers`` GRU layers → a linear map to the embedding size, whose
output at each position scores the next item against the (tied) item table. Trained at every
non-padding position with the ``loss`` axis of :mod:`recsys.models.seq_losses` (``ce`` by
default, as in Hidasi & Czapp's 2023 re-implementations).

Deviations from the paper: whole windows instead of session-parallel mini-batches, no
session-parallel hidden-state carry-over, tied output embeddings. Sequences are packed, so the
padding never enters the recurrence and left-padding a history changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.seq_losses import SeqObjective
from recsys.models.seq_padding import last_state_by_length


class GRU4Rec(Recommender):
    train_batch = "sequences"
    scores_history = True
    represents_users = True

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
    ):
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

    @property
    def item_weight(self) -> Tensor:
        """(I, d) the output layer: embeddings of the real items."""
        return self.item.weight[: self.num_items]

    def encode(self, seq: Tensor) -> Tensor:
        """(B, L) left-padded ids → (B, L, d) states (zero at padding)."""
        B, L = seq.shape
        real = seq != self.pad
        lengths = real.sum(1)
        n_pad = (L - lengths)[:, None]
        cols = torch.arange(L, device=seq.device)[None]
        right = seq.gather(1, (cols + n_pad).clamp(max=L - 1))  # (B, L) right-padded
        right = right.masked_fill(cols >= lengths[:, None], self.pad)
        packed = pack_padded_sequence(
            self.drop(self.item(right)),
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
        h = self.encode(batch.input)  # (B, L, d)
        return self.objective.next_item(
            h, batch.target, self.pad, self.item_weight, batch.loss_scale
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) final GRU state over each user's history."""
        seq = users.padded(self.max_len, self.pad)
        return last_state_by_length(seq, self.pad, self.encode)

    def score(self, users: UserBatch) -> Tensor:
        return self.user_representation(users) @ self.item_weight.T  # (B, I)
