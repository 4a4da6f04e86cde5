"""Building blocks shared by the sequence models (SASRec, BERT4Rec, GRU4Rec).

Sequences are ``(B, L)`` item ids **left-padded** with ``pad`` (= ``num_items``), so the most
recent item is always at column ``L - 1``. Positions are counted from the end of a window of
``max_len`` (column ``j`` of an ``L``-wide batch is position ``max_len - L + j``), so trimming
all-padding columns off the left of a batch changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


NULL_ATTENTION = ("none", "one", "padding")


def attention_mask(
    real: Tensor, causal: bool, null_attention: str = "none", max_len: int | None = None
) -> Tensor:
    """Which keys each query may attend to: (B, 1, L, L) bool, True where query ``i`` may
    attend to key ``j``; with a null slot, an additive float mask (B, 1, L, L + 1) whose first
    column belongs to the null key.

    Keys that are padding are hidden; with ``causal`` so are keys after the query. Every query
    sees itself, so a padding query (whose output is never used) has no empty row and
    ``scaled_dot_product_attention`` never returns NaN.

    ``null_attention`` adds one key/value that every query may attend to ("attend to nothing"),
    the projection of a zero input (see :class:`TransformerBlock`): ``one`` gives it the weight
    of one key; ``padding`` the weight of ``max_len - length`` keys (none for a full window),
    which is what unmasked, zeroed padding keys amount to in implementations that do not mask
    them (RecTools' SASRec), computed from the length so that padding a batch wider or
    narrower changes nothing.

    Args:
        real: (B, L) bool, True at real (non-padding) items.
    """
    L = real.shape[1]
    # built from float eye/tril: ONNX Runtime has no bool EyeLike/Trilu kernels
    eye = torch.eye(L, device=real.device) > 0
    mask = real[:, None, None, :].expand(-1, 1, L, -1)  # (B, 1, L, L) by key
    if causal:
        mask = mask & (torch.ones(L, L, device=real.device).tril() > 0)
    mask = mask | eye
    if null_attention == "none":
        return mask
    if null_attention == "one":
        null = torch.zeros(real.shape[0], device=real.device)
    else:  # log of the number of padding positions in a max_len window (-inf when full)
        assert max_len is not None, "null_attention=padding needs max_len"
        null = torch.log((max_len - real.sum(1)).float())
    additive = torch.zeros(mask.shape, device=real.device).masked_fill(~mask, float("-inf"))
    return torch.cat([null[:, None, None, None].expand(-1, 1, L, 1), additive], -1)


class TransformerBlock(nn.Module):
    """Multi-head self-attention and a position-wise feed-forward network, each wrapped in
    dropout, a residual connection and layer norm (``norm_first``: pre-LN; otherwise post-LN as
    in BERT4Rec / RecBole). ``residual_norm`` (with ``norm_first``) is the block of the SASRec
    paper's code: the query and the feed-forward input are normalised and each residual starts
    from that normalised value, while keys and values see the raw input. ``null_slot``: one
    more key/value in front of the others, the projection of a zero input (the key and value
    biases), weighted by the first column of the float mask of :func:`attention_mask`.
    Attention runs through ``F.scaled_dot_product_attention``."""

    def __init__(
        self,
        d: int,
        n_heads: int,
        inner: int,
        dropout: float,
        attn_dropout: float,
        activation: str = "gelu",
        norm_first: bool = True,
        eps: float = 1e-8,
        residual_norm: bool = False,
        null_slot: bool = False,
    ):
        super().__init__()
        assert d % n_heads == 0, "hidden size must be divisible by the number of heads"
        self.n_heads, self.attn_dropout, self.norm_first = n_heads, attn_dropout, norm_first
        self.residual_norm, self.null_slot = residual_norm, null_slot
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, inner), nn.Linear(inner, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.act = ACTIVATIONS[activation]

    def _attn(self, x: Tensor, mask: Tensor, kv: Tensor | None = None) -> Tensor:
        """Self-attention of queries ``x`` over keys/values ``kv`` (default: ``x``)."""
        B, L, d = x.shape
        if kv is None:
            q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)
        else:  # one projection table, query rows applied to x, key/value rows to kv
            w_q, w_kv = self.qkv.weight.split([d, 2 * d])
            b_q, b_kv = self.qkv.bias.split([d, 2 * d])
            q = F.linear(x, w_q, b_q).view(B, L, self.n_heads, d // self.n_heads)
            k, v = F.linear(kv, w_kv, b_kv).view(B, L, 2, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d/H)
        if self.null_slot:  # the key and value of a zero input: the projection biases
            k0, v0 = self.qkv.bias[d:].view(2, 1, self.n_heads, 1, d // self.n_heads).unbind(0)
            k = torch.cat([k0.expand(B, -1, -1, -1).to(k.dtype), k], 2)
            v = torch.cat([v0.expand(B, -1, -1, -1).to(v.dtype), v], 2)
        if mask.dtype != torch.bool:  # additive: SDPA wants it in the query's (autocast) dtype
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.drop(self.out(y.transpose(1, 2).reshape(B, L, d)))

    def _ff(self, x: Tensor) -> Tensor:
        return self.drop(self.ff2(self.drop(self.act(self.ff1(x)))))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, L, d); mask: from :func:`attention_mask` (with a null column iff
        ``null_slot``)."""
        if self.residual_norm:  # a pre-LN block (the encoders refuse it with norm_first=false)
            q = self.ln1(x)
            x = self.ln2(q + self._attn(q, mask, kv=x))
            return x + self._ff(x)
        if self.norm_first:
            x = x + self._attn(self.ln1(x), mask)
            return x + self._ff(self.ln2(x))
        x = self.ln1(x + self._attn(x, mask))
        return self.ln2(x + self._ff(x))


class SequenceEncoder(nn.Module):
    """Item + learned position embeddings, dropout, ``n_layers`` :class:`TransformerBlock` s.

    ``scale_embeddings``: item embeddings times sqrt(d) at the input (SASRec's reference code);
    the output layer uses the unscaled table. ``init``: ``normal`` (std ``init_std`` for every
    weight and embedding) or ``xavier`` (Glorot normal for every matrix, as RecTools does).
    ``item_dropout``: dropout on the item table itself in training, one mask per batch shared by
    the input lookup and the output layer (:meth:`table`). ``null_attention``: a null key/value
    in every block's attention (see :func:`attention_mask`).

    The item table has ``num_items + extra_tokens`` rows: ids ``0..num_items-1`` are items,
    ``num_items`` is padding (a zero row that gets no gradient), ``num_items + 1`` BERT4Rec's mask
    token. Its first ``num_items`` rows double as the output layer (tied weights).
    """

    def __init__(
        self,
        num_items: int,
        extra_tokens: int,
        max_len: int,
        d: int,
        n_layers: int,
        n_heads: int,
        inner: int,
        dropout: float,
        attn_dropout: float,
        activation: str,
        norm_first: bool,
        eps: float,
        init_std: float,
        scale_embeddings: bool = False,
        init: str = "normal",
        residual_norm: bool = False,
        item_dropout: float = 0.0,
        null_attention: str = "none",
    ):
        super().__init__()
        assert null_attention in NULL_ATTENTION, null_attention
        self.num_items, self.max_len, self.norm_first = num_items, max_len, norm_first
        self.item_dropout, self.null_attention = item_dropout, null_attention
        # Kang & McAuley's code multiplies the item embeddings by sqrt(d) before adding positions
        self.emb_scale = math.sqrt(d) if scale_embeddings else 1.0
        self.item = nn.Embedding(num_items + extra_tokens, d, padding_idx=num_items)
        self.pos = nn.Embedding(max_len, d)
        # BERT-style (post-LN) normalises the embedding sum; pre-LN blocks normalise inside
        self.emb_ln = nn.Identity() if norm_first else nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                d,
                n_heads,
                inner,
                dropout,
                attn_dropout,
                activation,
                norm_first,
                eps,
                residual_norm,
                null_slot=null_attention != "none",
            )
            for _ in range(n_layers)
        )
        self.final_ln = nn.LayerNorm(d, eps=eps) if norm_first else nn.Identity()
        self.apply(lambda m: _init(m, init_std, xavier=init == "xavier"))
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

    def forward(self, seq: Tensor, causal: bool, table: Tensor | None = None) -> Tensor:
        """(B, L) left-padded ids, L <= max_len → (B, L, d) hidden states (padding rows zero).

        ``table``: the item table to embed with (from :meth:`table`); default the stored one."""
        L = seq.shape[1]
        real = seq != self.num_items  # (B, L)
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)
        # padding_idx: the padding row gets no gradient through a batch's table either
        table = self.item.weight if table is None else table
        items = F.embedding(seq, table, padding_idx=self.num_items)
        items = items if self.emb_scale == 1.0 else items * self.emb_scale
        x = self.emb_ln(items + self.pos(pos)[None])  # (B, L, d)
        x = self.drop(x) * real[..., None]
        mask = attention_mask(real, causal, self.null_attention, self.max_len)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_ln(x) * real[..., None]


def _init(m: nn.Module, std: float, xavier: bool = False) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        if xavier:
            nn.init.xavier_normal_(m.weight)
        else:
            nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


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
