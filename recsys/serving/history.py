"""Fast history encoders for the causal transformer models (SASRec): a user's vector from a
history without the eager model's ~100 Python-level torch calls.

Two paths, each used only after it reproduced the eager model at load:

- :class:`OneBlockHistories`, for one-block models (the served Beauty configs): the last
  position's state in closed form, in numpy, from tables computed here at load. The first
  block's keys and values are affine in the layer-normed sum ``s·e_i + p_t`` of an item's and a
  position's embeddings, and a layer norm is ``(x - mean(x)) · rstd(x)`` with a linear centring,
  so ``W_kv · LN(s·e_i + p_t) = rstd_t · (K[i] + P[t] - mean_t · c) + b`` with ``K = s·W_kv
  diag(γ) E`` (one row per item, computed once), ``P`` the same for the positions,
  ``c = W_kv γ`` and ``b = W_kv β + b_kv``. A request then gathers its items' rows instead of
  projecting its whole window, and the rest (one query, one attention row, one feed-forward) is a
  few matrix-vector products: ~70 small numpy operations that touch ~1 MB of weights. It costs
  the catalogue ``(I + 1) × 2d`` float32 of memory (25 MB for Amazon Beauty at d = 256), and is
  not used above :data:`KV_TABLE_LIMIT` bytes.
- :class:`TracedHistories`, for the others (several blocks): ``torch.jit.trace`` of
  :class:`~recsys.models.transformer.LastState`, the same operations as the eager model in one
  TorchScript call that runs them in C++ with the GIL released for the whole graph.

Why. A history request's own compute is small (one history of a few items), so the eager path
is bound by Python and by the memory it touches per call: in the service the scoring thread
hands the GIL to the event loop and back at each torch call, and between requests (a few ms
apart) the weights and code leave the caches (benchmarks/serving.md).

What they trust. Nothing from the artifact runs: both are built here, in memory, from the eager
model that :class:`~recsys.serving.artifact.LoadedRecommender` rebuilt from ``weights_only``
tensors by recsys' own code. The model is recognised by what it holds (a
:class:`~recsys.models.transformer.TransformerEncoder` as ``encoder``, ``max_len``, ``pad``,
``item_table()``, no event context), and a path is used only if it reproduces
``model.user_representation`` on real histories of several batch sizes and lengths (known users
and no user, histories longer than ``max_len``) within :data:`RTOL`/:data:`ATOL`; otherwise, or
if building it fails, the next path is tried, and the eager path stays last. Both the Python API
and the HTTP service score through the same object, so their answers stay equal by
construction.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger("recsys")

# a fast path's vectors against the eager model's at load: the traced graph runs the same
# operations on the same shapes (bitwise where measured), the closed form reassociates them
# (within ~1e-6 where measured); anything further off is not used
RTOL, ATOL = 1e-5, 1e-6

# the most bytes the closed form's per-item key/value table may take ((I + 1) × 2d float32)
KV_TABLE_LIMIT = 1 << 30


def history_encoder(
    model: Any, probes: Sequence[tuple[int, np.ndarray]]
) -> tuple[OneBlockHistories | TracedHistories | None, str]:
    """The fastest path that reproduces ``model`` on ``probes`` ((internal user, history) pairs
    of real users) and its name (``"one block, closed form"``, ``"traced"``), or None and why
    the eager path stays."""
    closed, why_not = OneBlockHistories.of(model, probes)
    if closed is not None:
        return closed, "one block, closed form"
    traced, why = TracedHistories.of(model, probes)
    if traced is not None:
        if not why_not.startswith("not one block"):
            log.info("history vectors: the closed form is not used: %s", why_not)
        return traced, "traced"
    return None, why


def _not_a_history_transformer(model: Any) -> str | None:
    """Why ``model`` is not a causal transformer history model the fast paths can encode
    (None: it is one)."""
    from recsys.models.transformer import TransformerEncoder

    if not isinstance(getattr(model, "encoder", None), TransformerEncoder) or not getattr(
        model, "scores_history", 0
    ):
        return "not a transformer history model"
    if getattr(model, "context_emb", None):
        return "the model reads event context"
    if model.training:
        return "the model is in training mode"
    max_len, pad = getattr(model, "max_len", None), getattr(model, "pad", None)
    if not isinstance(max_len, int) or not isinstance(pad, int) or max_len < 1:
        return "no max_len / pad"
    return None


def _differs(
    encode: Callable[[list[np.ndarray]], np.ndarray],
    model: Any,
    probes: Sequence[tuple[int, np.ndarray]],
) -> str | None:
    """Why ``encode`` (histories → (n, d) vectors) does not reproduce ``model.user_representation``
    on ``probes`` (None: it does): each batch size once, then a few mixed batches (short and
    long histories, one item), for the known users and for no user (the vector is the
    history's alone)."""
    from recsys.data.batches import UserBatch

    sets = [probes[:1], probes[-1:], probes[:2], probes[1:6], probes[:17], probes]
    with torch.inference_mode():
        for rows in sets:
            hists = [h for _, h in rows]
            for users in ([u for u, _ in rows], [-1] * len(rows)):
                want = model.user_representation(
                    UserBatch.from_lists(users, [h.tolist() for h in hists])
                ).float()
                got = torch.from_numpy(encode(hists))
                if got.shape != want.shape:  # e.g. a history match's extra coordinates
                    shapes = f"{tuple(got.shape)} against {tuple(want.shape)}"
                    return f"its vectors differ from the model's in shape ({shapes})"
                if not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
                    diff = (got - want).abs().max().item()
                    return f"its vectors differ from the model's ({diff:.2e})"
    return None


def _checked(
    build: Callable[[list[tuple[int, np.ndarray]]], Any],
    model: Any,
    probes: Sequence[tuple[int, np.ndarray]],
    name: str,
    failing: str,
) -> tuple[Any, str]:
    """``(build(probes), name)`` when it reproduces ``model`` on the probes with a history, else
    None and why not (``failing``: what a ``build`` that raised was doing)."""
    probes = [(int(u), np.asarray(h, dtype=np.int64)) for u, h in probes if len(h)]
    if not probes:
        return None, "no history to check it on"
    try:
        fast = build(probes)
        why = _differs(fast, model, probes)
    except Exception as e:  # noqa: BLE001 - a model it does not fit keeps another path
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return None, f"{failing} ({type(e).__name__}: {first})"
    return (None, why) if why is not None else (fast, name)


def padded(histories: Sequence[np.ndarray], max_len: int, pad: int) -> np.ndarray:
    """(n, L) int64: the histories' ``max_len`` most recent items, left-padded with ``pad`` to
    the longest (at least one column): the layout the eager model encodes after trimming
    all-padding columns (:func:`~recsys.models.seq_padding.trim_padding`)."""
    L = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.full((len(histories), L), pad, dtype=np.int64)
    for r, h in enumerate(histories):
        if len(h):
            h = h[-L:]
            out[r, L - len(h) :] = h
    return out


class _Norm:
    """A layer norm's parameters as float32 numpy arrays, applied over the last axis."""

    def __init__(self, ln: torch.nn.LayerNorm):
        self.weight = ln.weight.detach().float().numpy().copy()
        self.bias = ln.bias.detach().float().numpy().copy()
        self.eps = float(ln.eps)

    def stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x - mean``, the mean and ``1 / sqrt(var + eps)`` of each row (keepdims)."""
        inv = np.float32(1.0 / x.shape[-1])  # sums, not np.mean: ~10 us less per call
        mean = x.sum(-1, keepdims=True) * inv
        centred = x - mean
        var = (centred * centred).sum(-1, keepdims=True) * inv
        return centred, mean, 1.0 / np.sqrt(var + self.eps)

    def standard(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / sqrt(var + eps)``: the norm without its weight and bias (for a
        :class:`_Linear` that folded them in)."""
        centred, _, rstd = self.stats(x)
        return centred * rstd

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.standard(x) * self.weight + self.bias


class _Linear:
    """``x @ W.T + b`` with ``W.T`` stored contiguous (a BLAS matrix-vector product per call).

    ``norm``: a layer norm in front, folded in (the call then takes :meth:`_Norm.standard`'s
    output): ``W (γ ⊙ x̂ + β) + b = (W diag γ) x̂ + (W β + b)``; ``scale`` multiplies the output
    (folded in too). The folds are computed in float64."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        norm: torch.nn.LayerNorm | None = None,
        scale: float = 1.0,
    ):
        w, b = weight.detach().double(), bias.detach().double()
        if norm is not None:
            w, b = w * norm.weight.detach().double(), w @ norm.bias.detach().double() + b
        self.wt = np.ascontiguousarray((w * scale).float().numpy().T)
        self.bias = (b * scale).float().numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.wt + self.bias


def _activation(name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The transformer's activation ``name`` (``ACTIVATIONS``) on numpy arrays; None if this
    module has no such form. GELU is the exact (erf) one, as ``F.gelu``'s default."""
    if name == "relu":
        return lambda x: np.maximum(x, 0)
    if name == "gelu":
        from scipy.special import erf  # ~0.5 s to import: once, when a GELU model is built

        half = np.float32(1.0 / math.sqrt(2.0))
        return lambda x: 0.5 * x * (1.0 + erf(x * half))
    return None


class OneBlockHistories:
    """(n, d) float32 user vectors of histories (internal item ids, oldest first) for a causal
    transformer model with one block, in closed form (see the module docstring). Build with
    :meth:`of`."""

    def __init__(self, model: Any):
        from recsys.models.transformer import ACTIVATIONS, PostLNBlock, PreLNBlock

        enc = model.encoder
        (block,) = enc.blocks
        if type(block) not in (PreLNBlock, PostLNBlock):
            raise ValueError(f"an unknown block {type(block).__name__}")
        names = [name for name, fn in ACTIVATIONS.items() if fn is block.act]
        act = _activation(names[0]) if len(names) == 1 else None
        if act is None:
            raise ValueError("an unknown activation")
        self.max_len, self.pad = int(model.max_len), int(model.pad)
        self.pre = isinstance(block, PreLNBlock)  # pre-LN: residual from the raw sum, final LN
        d = enc.item.weight.shape[1]
        self.heads = int(block.n_heads)
        scale = 1.0 / math.sqrt(d // self.heads)  # the attention's, folded into the query
        with torch.no_grad():
            table = model.item_table().detach().float() * enc.emb_scale  # (I + 1, d) s·e_i
            # the layer norm in front of the attention: the block's own (pre-LN) or the
            # encoder's input norm (post-LN)
            ln_in = block.ln1 if self.pre else enc.emb_ln
            gamma, beta = ln_in.weight.double(), ln_in.bias.double()
            w, b = block.qkv.weight.double(), block.qkv.bias.double()
            g = w[d:] * gamma  # (2d, d): keys and values of a centred, unscaled input
            self.item_in = table.numpy()
            self.pos_in = enc.pos.weight.detach().float().numpy().copy()  # (max_len, d)
            self.item_kv = np.empty((len(table), 2 * d), dtype=np.float32)  # (I + 1, 2d)
            for s in range(0, len(table), 4096):  # float64 products, a block at a time
                self.item_kv[s : s + 4096] = (table[s : s + 4096].double() @ g.T).numpy()
            self.pos_kv = (enc.pos.weight.double() @ g.T).float().numpy()  # (max_len, 2d)
            self.centre_kv = g.sum(1).float().numpy()  # (2d,)
            self.bias_kv = (w[d:] @ beta + b[d:]).float().numpy()  # (2d,)
        # pre-LN: the query and the feed-forward's first layer take standardised inputs, their
        # norms folded in (post-LN needs the normed vectors themselves, as residuals)
        fold_in, fold_2 = (ln_in, block.ln2) if self.pre else (None, None)
        self.query = _Linear(block.qkv.weight[:d], block.qkv.bias[:d], fold_in, scale)
        self.ln_in = _Norm(ln_in)
        self.out = _Linear(block.out.weight, block.out.bias)
        self.ff1 = _Linear(block.ff1.weight, block.ff1.bias, fold_2)
        self.ff2 = _Linear(block.ff2.weight, block.ff2.bias)
        self.act = act
        self.ln1, self.ln2 = _Norm(block.ln1), _Norm(block.ln2)
        self.final_ln = _Norm(enc.final_ln) if self.pre else None

    @classmethod
    def of(
        cls, model: Any, probes: Sequence[tuple[int, np.ndarray]]
    ) -> tuple[OneBlockHistories | None, str]:
        """The closed form for ``model`` checked on ``probes``, or None and why not."""
        why = _not_a_history_transformer(model)
        if why is not None:
            return None, why
        blocks = len(model.encoder.blocks)
        if blocks != 1:
            return None, f"not one block ({blocks})"
        size = model.encoder.item.weight.shape
        if size[0] * size[1] * 2 * 4 > KV_TABLE_LIMIT:
            return None, f"its key/value table would exceed {KV_TABLE_LIMIT} bytes"
        return _checked(lambda _: cls(model), model, probes, "closed form", "building it failed")

    def __call__(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        seq = padded(histories, self.max_len, self.pad)  # (n, L)
        n, L = seq.shape
        pos = slice(self.max_len - L, self.max_len)
        real = seq != self.pad
        raw = np.take(self.item_in, seq, 0) + self.pos_in[pos]  # (n, L, d) s·e_i + p_t
        centred, mean, rstd = self.ln_in.stats(raw)
        kv = np.take(self.item_kv, seq, 0) + self.pos_kv[pos]
        kv -= mean * self.centre_kv
        kv *= rstd
        kv += self.bias_kv  # (n, L, 2d): the keys and values of every position
        d, h = raw.shape[2], self.heads
        k, v = (
            part.reshape(n, L, h, d // h).transpose(0, 2, 1, 3)
            for part in (kv[..., :d], kv[..., d:])
        )
        x = centred[:, -1] * rstd[:, -1]  # (n, d) the last input, standardised
        if not self.pre:
            x = x * self.ln_in.weight + self.ln_in.bias  # normed: the block's input
        logits = (k @ self.query(x).reshape(n, h, d // h, 1))[..., 0]  # (n, h, L), scaled
        if not real.all():  # padding keys are hidden; every query sees itself
            visible = real.copy()
            visible[:, -1] = True  # (an empty row's output is zeroed below)
            logits = np.where(visible[:, None, :], logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = (weights[:, :, None, :] @ v).reshape(n, d)  # (n, h, 1, d/h) -> (n, d)
        if self.pre:  # x + attn(LN1(x)), then + ff(LN2(.)), then the final norm
            y = raw[:, -1] + self.out(y)
            y = y + self.ff2(self.act(self.ff1(self.ln2.standard(y))))
            y = self.final_ln(y)
        else:  # LN1(x + attn(x)), then LN2(. + ff(.)), with x the normed input
            y = self.ln1(x + self.out(y))
            y = self.ln2(y + self.ff2(self.act(self.ff1(y))))
        return np.ascontiguousarray(y * real[:, -1:], dtype=np.float32)


class TracedHistories:
    """(n, d) float32 user vectors of histories (internal item ids, oldest first) for a causal
    transformer model, from one traced graph; see the module docstring. Build with :meth:`of`."""

    def __init__(self, graph: Any, max_len: int, pad: int):
        self.graph, self.max_len, self.pad = graph, max_len, pad

    @classmethod
    def of(
        cls, model: Any, probes: Sequence[tuple[int, np.ndarray]]
    ) -> tuple[TracedHistories | None, str]:
        """The traced path for ``model`` checked on ``probes`` ((internal user, history) pairs
        of real users), or None and why not."""
        from recsys.models.transformer import LastState

        why = _not_a_history_transformer(model)
        if why is not None:
            return None, why

        def trace(probes: list[tuple[int, np.ndarray]]) -> TracedHistories:
            with torch.inference_mode():
                table = model.item_table().detach()  # the weights themselves, no copy
                module = LastState(model.encoder, table, causal=True)
                example = padded([h for _, h in probes[:3]], model.max_len, model.pad)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings: sizes are read from seq
                    graph = torch.jit.trace(module, torch.from_numpy(example), check_trace=False)
            return cls(graph, model.max_len, model.pad)

        return _checked(trace, model, probes, "traced", "tracing failed")

    def __call__(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        seq = torch.from_numpy(padded(histories, self.max_len, self.pad))
        with torch.inference_mode():
            return self.graph(seq).float().numpy()
