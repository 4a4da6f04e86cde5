"""The transformer family (SASRec, BERT4Rec): shared settings and one encoder.

:class:`TransformerSettings` holds the hyper-parameters the two models share (each model
subclasses it with its own defaults and extra keys); :class:`TransformerEncoder` is item +
learned position embeddings followed by a stack of blocks, the block class chosen by
``norm_first``: :class:`PreLNBlock` (SASRec's code) or :class:`PostLNBlock` (BERT, RecBole).

Sequences are left-padded (:mod:`recsys.models.seq_padding`). Positions are counted from the end
of a window of ``max_len`` (column ``j`` of an ``L``-wide batch is position ``max_len - L + j``),
so trimming all-padding columns off the left of a batch changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.base import require
from recsys.models.seq_losses import SeqObjective

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}

# Options removed from the family (variants that lost on validation, unused by every shipped
# config: benchmarks/sequential.md, Changelog), at the value that meant "off". Older checkpoints and
# artifacts carry them; build_model drops them at that value and refuses any other.
RETIRED = {"null_attention": "none", "residual_norm": False, "init": "normal"}


@dataclass(frozen=True, kw_only=True)
class TransformerSettings:
    """Hyper-parameters shared by SASRec and BERT4Rec (``model.<field>`` in their configs,
    where each key is described), validated on construction. Subclasses set the defaults of
    ``norm_first`` and ``layer_norm_eps`` and add their own keys."""

    max_len: int = 50
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    dropout: float = 0.2
    attn_dropout: float = 0.2
    activation: str = "gelu"
    norm_first: bool
    layer_norm_eps: float
    init_std: float = 0.02
    scale_embeddings: bool = False
    item_dropout: float = 0.0
    loss: str = "ce"
    num_negatives: int = 1
    gbce_t: float = 0.75
    ce_chunk: int = 1 << 20
    shared_negatives: bool = False
    # attributes of the items (recsys.models.features): null = ids only
    features: dict | None = None

    def __post_init__(self) -> None:
        require(self.max_len >= 2, "max_len", self.max_len, "an integer >= 2")
        require(self.hidden_size >= 1, "hidden_size", self.hidden_size, "an integer >= 1")
        require(self.n_layers >= 1, "n_layers", self.n_layers, "an integer >= 1")
        require(
            self.n_heads >= 1 and self.hidden_size % self.n_heads == 0,
            "n_heads",
            self.n_heads,
            f"a positive divisor of hidden_size ({self.hidden_size})",
        )
        require(self.inner_size >= 1, "inner_size", self.inner_size, "an integer >= 1")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        require(0 <= self.attn_dropout < 1, "attn_dropout", self.attn_dropout, "in [0, 1)")
        require(
            self.activation in ACTIVATIONS,
            "activation",
            self.activation,
            f"one of {', '.join(ACTIVATIONS)}",
        )
        require(0 <= self.item_dropout < 1, "item_dropout", self.item_dropout, "in [0, 1)")
        self.objective()  # validates the loss keys

    def objective(self) -> SeqObjective:
        """The loss these settings define."""
        return SeqObjective(
            self.loss, self.num_negatives, self.gbce_t, self.ce_chunk, self.shared_negatives
        )


def attention_mask(real: Tensor, causal: bool) -> Tensor:
    """Which keys each query may attend to: (B, 1, L, L) bool, True where query ``i`` may
    attend to key ``j``.

    Keys that are padding are hidden; with ``causal`` so are keys after the query. Every query
    sees itself, so a padding query (whose output is never used) has no empty row and
    ``scaled_dot_product_attention`` never returns NaN.

    Args:
        real: (B, L) bool, True at real (non-padding) items.
    """
    L = real.shape[1]
    # built from float eye/tril: ONNX Runtime has no bool EyeLike/Trilu kernels
    eye = torch.eye(L, device=real.device) > 0
    mask = real[:, None, None, :].expand(-1, 1, L, -1)  # (B, 1, L, L) by key
    if causal:
        mask = mask & (torch.ones(L, L, device=real.device).tril() > 0)
    return mask | eye


def last_query_mask(real: Tensor) -> Tensor:
    """(B, 1, 1, L) bool: :func:`attention_mask`'s row of the last query, causal or not (it
    may attend to every real key, and to itself), without building the (L, L) rest."""
    L = real.shape[1]
    last = torch.arange(L, device=real.device) == L - 1
    return (real | last)[:, None, None, :]


class _Sublayers(nn.Module):
    """What both blocks hold: multi-head self-attention (``F.scaled_dot_product_attention``) and
    a position-wise feed-forward network, each followed by dropout, and two layer norms; the
    block classes differ only in where the norms and residuals go."""

    # whether the encoder normalises the embedding sum (input) or the last block's output
    norm_input: ClassVar[bool]
    norm_output: ClassVar[bool]

    def __init__(
        self,
        d: int,
        n_heads: int,
        inner: int,
        dropout: float,
        attn_dropout: float,
        activation: str,
        eps: float,
    ):
        super().__init__()
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        # registration order fixes the order of the initialisation's random draws
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, inner), nn.Linear(inner, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.act = ACTIVATIONS[activation]

    def attend(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, L, d) self-attention of ``x`` under ``mask`` (:func:`attention_mask`)."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d/H)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.drop(self.out(y.transpose(1, 2).reshape(B, L, d)))

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.drop(self.ff2(self.drop(self.act(self.ff1(x)))))

    def attend_last(self, q_in: Tensor, kv_in: Tensor, mask: Tensor) -> Tensor:
        """(B, 1, d) self-attention output at the last position only: the query from
        ``q_in`` (B, 1, d), keys and values from ``kv_in`` (B, L, d) (inference: a user's
        state after the newest item needs no other position's output). ``mask``: the full
        (B, 1, L, L) mask or its last row (:func:`last_query_mask`)."""
        B, L, d = kv_in.shape
        h = d // self.n_heads
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(q_in, w[:d], b[:d]).view(B, 1, self.n_heads, h).transpose(1, 2)
        k, v = F.linear(kv_in, w[d:], b[d:]).view(B, L, 2, self.n_heads, h).unbind(2)
        y = F.scaled_dot_product_attention(
            q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, :, -1:]
        )  # (B, H, 1, d/H)
        return self.drop(self.out(y.transpose(1, 2).reshape(B, 1, d)))


class PreLNBlock(_Sublayers):
    """Pre-LN: ``x + attn(LN(x))``, then ``x + ff(LN(x))``; the stack ends with a layer norm
    (SASRec's code, Xiong et al. 2020)."""

    norm_input, norm_output = False, True

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attend(self.ln1(x), mask)
        return x + self.feed_forward(self.ln2(x))

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, 1, d) :meth:`forward`'s output at the last position alone."""
        h = self.ln1(x)
        y = x[:, -1:] + self.attend_last(h[:, -1:], h, mask)
        return y + self.feed_forward(self.ln2(y))


class PostLNBlock(_Sublayers):
    """Post-LN: ``LN(x + attn(x))``, then ``LN(x + ff(x))``; the embedding sum is normalised
    before the first block (BERT, BERT4Rec, RecBole)."""

    norm_input, norm_output = True, False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.ln1(x + self.attend(x, mask))
        return self.ln2(x + self.feed_forward(x))

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, 1, d) :meth:`forward`'s output at the last position alone."""
        y = self.ln1(x[:, -1:] + self.attend_last(x[:, -1:], x, mask))
        return self.ln2(y + self.feed_forward(y))


BLOCKS: dict[bool, type[_Sublayers]] = {True: PreLNBlock, False: PostLNBlock}  # by norm_first


class TransformerEncoder(nn.Module):
    """Item + learned position embeddings, dropout, ``n_layers`` blocks (``BLOCKS[norm_first]``).

    ``scale_embeddings``: item embeddings times sqrt(d) at the input (SASRec's reference code);
    the output layer uses the unscaled table. Every weight and embedding is initialised normal
    with std ``init_std``, biases zero. ``item_dropout``: dropout on the item table itself in
    training, one mask per batch shared by the input lookup and the output layer
    (:meth:`table`).

    The item table has ``num_items + extra_tokens`` rows: ids ``0..num_items-1`` are items,
    ``num_items`` is padding (a zero row that gets no gradient), ``num_items + 1`` BERT4Rec's mask
    token. Its first ``num_items`` rows double as the output layer (tied weights).
    """

    def __init__(self, num_items: int, extra_tokens: int, s: TransformerSettings):
        super().__init__()
        d, block = s.hidden_size, BLOCKS[bool(s.norm_first)]
        self.num_items, self.max_len = num_items, s.max_len
        self.item_dropout = float(s.item_dropout)
        # Kang & McAuley's code multiplies the item embeddings by sqrt(d) before adding positions
        self.emb_scale = math.sqrt(d) if s.scale_embeddings else 1.0
        self.item = nn.Embedding(num_items + extra_tokens, d, padding_idx=num_items)
        self.pos = nn.Embedding(s.max_len, d)
        eps = s.layer_norm_eps
        self.emb_ln = nn.LayerNorm(d, eps=eps) if block.norm_input else nn.Identity()
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(
            block(d, s.n_heads, s.inner_size, s.dropout, s.attn_dropout, s.activation, eps)
            for _ in range(s.n_layers)
        )
        self.final_ln = nn.LayerNorm(d, eps=eps) if block.norm_output else nn.Identity()
        self.apply(lambda m: _init(m, s.init_std))
        with torch.no_grad():
            self.item.weight[num_items].zero_()

    @property
    def item_weight(self) -> Tensor:
        """(I, d) the output layer: embeddings of the real items."""
        return self.item.weight[: self.num_items]

    def table(self) -> Tensor:
        """(I + extra, d) the item table for one training batch: with ``item_dropout``, one
        dropout mask for the input and the output; outside training the table itself."""
        if self.item_dropout > 0 and self.training:
            return F.dropout(self.item.weight, self.item_dropout)
        return self.item.weight

    def forward(
        self,
        seq: Tensor,
        causal: bool,
        table: Tensor | None = None,
        extra: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """(B, L) left-padded ids, L <= max_len → (B, L, d) hidden states (padding rows zero).

        ``table``: the item table to embed with (from :meth:`table`); default the stored one.
        ``extra``: (B, L, d) added to each position's (scaled) item embedding before the
        positional embedding, normalisation and dropout (e.g. the embedded context of each event);
        None adds nothing. ``last_only``: (B, 1, d), the last position's state alone (the last
        block computes no other position's output: a user's state for scoring)."""
        L = seq.shape[1]
        real = seq != self.num_items  # (B, L)
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)
        # padding_idx: the padding row gets no gradient through a batch's table either
        table = self.item.weight if table is None else table
        items = F.embedding(seq, table, padding_idx=self.num_items)
        items = items if self.emb_scale == 1.0 else items * self.emb_scale
        if extra is not None:
            items = items + extra
        x = self.emb_ln(items + self.pos(pos)[None])  # (B, L, d)
        x = self.drop(x) * real[..., None]
        blocks = list(self.blocks)
        if last_only and blocks:
            # one block: only the last query's row of the mask is used (B, 1, 1, L)
            mask = attention_mask(real, causal) if len(blocks) > 1 else last_query_mask(real)
            for block in blocks[:-1]:
                x = block(x, mask)
            return self.final_ln(blocks[-1].forward_last(x, mask)) * real[:, -1:, None]
        mask = attention_mask(real, causal)
        for block in blocks:
            x = block(x, mask)
        return self.final_ln(x) * real[..., None]


class LastState(nn.Module):
    """Inference only: (B, L) left-padded ids → (B, d) ``encoder``'s state at the last position,
    with the item table ``table`` fixed (an eval-mode model's :meth:`TransformerEncoder.table`,
    item attributes included): ``encoder(seq, causal, table, last_only=True)[:, -1]``.

    One module so that ``torch.jit.trace`` makes it one graph: batch size and length stay
    dynamic (every size is read from ``seq``), and a call then runs its ~100 small operations in
    C++ with the GIL released once, instead of ~100 Python calls (serving). The same operations
    on the same shapes as the eager encoder, so the same values (checked where it is used)."""

    def __init__(self, encoder: TransformerEncoder, table: Tensor, causal: bool):
        super().__init__()
        self.encoder, self.causal = encoder, bool(causal)
        self.register_buffer("table", table.detach(), persistent=False)

    def forward(self, seq: Tensor) -> Tensor:
        return self.encoder(seq, self.causal, self.table, None, True)[:, -1]


def _init(m: nn.Module, std: float) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
