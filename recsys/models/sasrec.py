"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Causal self-attention over a user's ``max_len`` most recent items with learned positional
embeddings; the hidden state at each position scores the next item against the item embeddings
(tied input/output table). Trained at every non-padding position of every window
(:class:`~recsys.data.batches.SeqBatch`) with the loss chosen in ``loss`` (see
:mod:`recsys.models.seq_losses`): ``bce`` with one negative is the paper; ``ce`` is SASRec+
(Klenitskiy & Vasilev, RecSys 2023); ``sampled_ce``; ``gbce`` is gSASRec (Petrov & Macdonald,
RecSys 2023).

Deviations from the paper: positions are counted back from the most recent item (the paper's
left-padded layout gives the same thing); GELU or ReLU feed-forward (``activation``); the
paper's code's block (``residual_norm``), standard pre-LN (``norm_first``) or post-LN
(``norm_first=false``, as in RecBole); ``init: xavier`` is RecTools' initialisation;
``null_attention`` (a key/value every query may attend to instead of the items; ``padding``
gives it the weight RecTools' unmasked padding keys have) keeps padding invariance.
"""

from __future__ import annotations

from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.models.base import Recommender, require
from recsys.models.layers import (
    ACTIVATIONS,
    NULL_ATTENTION,
    SequenceEncoder,
    last_state_by_length,
)
from recsys.models.seq_losses import LOSSES, next_item_loss


def check_transformer_args(
    max_len: int,
    hidden_size: int,
    n_layers: int,
    n_heads: int,
    inner_size: int,
    dropout: float,
    attn_dropout: float,
    activation: str,
    loss: str,
    num_negatives: int,
    gbce_t: float,
) -> None:
    """Validate the hyper-parameters SASRec and BERT4Rec share (one-line errors by key)."""
    require(max_len >= 2, "max_len", max_len, "an integer >= 2")
    require(hidden_size >= 1, "hidden_size", hidden_size, "an integer >= 1")
    require(n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
    require(
        n_heads >= 1 and hidden_size % n_heads == 0,
        "n_heads",
        n_heads,
        f"a positive divisor of hidden_size ({hidden_size})",
    )
    require(inner_size >= 1, "inner_size", inner_size, "an integer >= 1")
    require(0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
    require(0 <= attn_dropout < 1, "attn_dropout", attn_dropout, "in [0, 1)")
    require(activation in ACTIVATIONS, "activation", activation, f"one of {', '.join(ACTIVATIONS)}")
    require(loss in LOSSES, "loss", loss, f"one of {', '.join(LOSSES)}")
    require(num_negatives >= 1, "num_negatives", num_negatives, "an integer >= 1")
    require(0 <= gbce_t <= 1, "gbce_t", gbce_t, "in [0, 1]")


def transformer_encoder(num_items: int, extra_tokens: int, hp: dict) -> SequenceEncoder:
    """The :class:`SequenceEncoder` of SASRec/BERT4Rec from their hyper-parameters (``hp``: the
    model constructor's arguments, already checked by :func:`check_transformer_args`)."""
    require(hp["init"] in ("normal", "xavier"), "init", hp["init"], "one of: normal, xavier")
    require(0 <= hp["item_dropout"] < 1, "item_dropout", hp["item_dropout"], "in [0, 1)")
    require(
        hp["null_attention"] in NULL_ATTENTION,
        "null_attention",
        hp["null_attention"],
        f"one of: {', '.join(NULL_ATTENTION)}",
    )
    require(
        hp["norm_first"] or not hp["residual_norm"],
        "residual_norm",
        hp["residual_norm"],
        "false with norm_first=false (it is a pre-LN block)",
    )
    keys = ("max_len", "hidden_size", "n_layers", "n_heads", "inner_size", "dropout")
    keys += ("attn_dropout", "activation", "norm_first", "layer_norm_eps", "init_std")
    return SequenceEncoder(
        num_items,
        extra_tokens,
        *(hp[k] for k in keys),
        scale_embeddings=bool(hp["scale_embeddings"]),
        init=hp["init"],
        residual_norm=bool(hp["residual_norm"]),
        item_dropout=float(hp["item_dropout"]),
        null_attention=hp["null_attention"],
    )


class SASRec(Recommender):
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
        norm_first: bool = True,
        layer_norm_eps: float = 1e-8,
        init_std: float = 0.02,
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
        require(ce_chunk >= 1, "ce_chunk", ce_chunk, "an integer >= 1")
        self.max_len, self.loss_name, self.num_negatives = int(max_len), loss, int(num_negatives)
        self.gbce_t, self.ce_chunk, self.pad = float(gbce_t), int(ce_chunk), num_items
        self.shared_negatives = bool(shared_negatives)
        # the constructor's own arguments (locals) carry the encoder's hyper-parameters
        self.encoder = transformer_encoder(num_items, 1, locals())

    def loss(self, batch: SeqBatch) -> Tensor:
        table = self.encoder.table()  # one item-dropout mask for input and output
        h = self.encoder(batch.input, causal=True, table=table)  # (B, L, d)
        return next_item_loss(
            h,
            batch.target,
            self.pad,
            table[: self.pad],
            self.loss_name,
            self.num_negatives,
            self.gbce_t,
            self.ce_chunk,
            shared_negatives=self.shared_negatives,
        )

    def user_representation(self, users: UserBatch) -> Tensor:
        """(B, d) final hidden state: the encoder's state after each user's newest item."""
        seq = users.padded(self.max_len, self.pad)
        return last_state_by_length(seq, self.pad, lambda s: self.encoder(s, causal=True))

    def score(self, users: UserBatch) -> Tensor:
        return self.user_representation(users) @ self.encoder.item_weight.T  # (B, I)
