r"""The loss axis of the sequence models, computed on gathered (non-padding) positions only.

For a trained position with hidden state :math:`h`, target item :math:`y` and item table
:math:`W` (tied with the input embeddings), :math:`s_i = h^\top W_i`:

- ``ce``: full softmax cross-entropy :math:`-s_y + \log\sum_{i} e^{s_i}` over every item
  (SASRec+, Klenitskiy & Vasilev, RecSys 2023). Fused with its gradient in chunks of
  positions (``chunk_elems`` logits each): the (N, I) logits are never stored.
- ``sampled_ce``: the same softmax over the target and ``K`` uniformly sampled items
  (accidental hits of the target among the negatives are removed). With negatives per
  position it is fused the same way (:class:`_FusedSampledCE`): one chunk of gathered
  candidate embeddings at a time.
- ``bce``: :math:`-\log\sigma(s_y) - \sum_{k \le K}\log(1-\sigma(s_{n_k}))` with ``K`` uniform
  negatives per position (the original SASRec, Kang & McAuley 2018, has K = 1).
- ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023):
  :math:`-\log\sigma(s_y)^{\beta} - \sum_k \log(1-\sigma(s_{n_k}))` with
  :math:`\alpha = K / (I - 1)` and :math:`\beta = \alpha\,(t\,(1 - 1/\alpha) + 1/\alpha)`; the
  calibration ``t`` interpolates between BCE (t = 0, β = 1) and β = α (t = 1).

Each is averaged over the trained positions (gSASRec's code averages over the ``1 + K`` terms
as well; that is a constant factor of ``1 + K``). Negatives are drawn per position with
``torch.randint`` (the module seeds torch per epoch).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from recsys.models.base import require

_null = contextlib.nullcontext

LOSSES = ("bce", "ce", "sampled_ce", "gbce")


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's exponent β of the positive probability."""
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


class _GradInForward(torch.autograd.Function):
    """A mean loss whose forward already computed the gradients of its summed value with
    respect to its first inputs (``h``, ``weight``, ...) and saved them in that order, with
    ``ctx.n`` positions and the inputs' ``ctx.dtypes``: backward only scales them by the
    incoming gradient (None for the other inputs)."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        scale = grad.float() / ctx.n
        out = [
            None if g is None else (g * scale).to(dt)
            for g, dt in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        return (*out, *(None,) * (len(ctx.needs_input_grad) - len(out)))


class _FusedLinearCE(_GradInForward):
    """Mean full-softmax CE of ``h @ weight.T`` against ``target`` with the gradient computed in
    the forward pass, one chunk of ``rows`` positions at a time (Liger-kernel style).

    Per chunk: logits into a reused buffer (one matrix product), ``p = softmax`` (one fused
    pass), the loss from ``logsumexp = max(s) - log(max(p))`` (exact, no underflow: the largest
    probability is >= 1/I), then ``p[y] -= 1`` is the gradient of the chunk's summed loss with
    respect to its logits, so ``dh = p @ W`` and ``dW += p.T @ h`` follow at once. Neither the
    (N, I) logits nor their log-softmax are ever kept, nothing is recomputed in backward, and
    backward only scales the two stored gradients by the incoming one.
    """

    @staticmethod
    def forward(ctx, h, weight, c, target, x, xt, rows: int, onednn: bool) -> Tensor:
        """``c`` (N, D), ``x`` (I, D) sparse and ``xt`` its transpose, or all three None: an
        optional second, sparse part of the logits, ``h @ weight.T + c @ x.T`` (SASRec's
        history-candidate attribute match, :class:`~recsys.models.features.HistoryMatch`),
        whose gradient with respect to ``c`` is ``(p - onehot) @ x`` per chunk."""
        want_h, want_w, want_c = ctx.needs_input_grad[:3]
        ctx.dtypes = (h.dtype, weight.dtype, None if c is None else c.dtype)
        h, weight = h.float(), weight.float()
        c = None if c is None else c.float()
        N, n_items = h.shape[0], weight.shape[0]
        wt = weight.T.contiguous()  # (d, I): the forward product reads it row-major
        gh = torch.empty_like(h) if want_h else None
        gw = torch.zeros_like(weight) if want_w else None
        gc = torch.empty_like(c) if want_c else None
        logits = h.new_empty((min(rows, N), n_items))
        p = torch.empty_like(logits)
        total = h.new_zeros(())
        for s in range(0, N, rows):
            hc, tc = h[s : s + rows], target[s : s + rows]
            r = hc.shape[0]
            lg, pc = logits[:r], p[:r]
            # full chunks only: oneDNN builds (and keeps) kernels per shape
            with _mkldnn_fp32_precision("bf16") if onednn and r == rows else _null():
                torch.mm(hc, wt, out=lg)
                if c is not None:
                    lg.add_(torch.sparse.mm(x, c[s : s + rows].T).T)
                torch.ops.aten._softmax.out(lg, 1, False, out=pc)
                at = torch.arange(r, device=h.device)
                lse = lg.amax(1) - pc.amax(1).log()
                total += (lse - lg[at, tc]).sum()
                if want_h or want_w or want_c:
                    pc[at, tc] -= 1.0
                    if want_h:
                        torch.mm(pc, weight, out=gh[s : s + rows])
                    if want_w:
                        gw.addmm_(pc.T, hc)
                    if want_c:
                        gc[s : s + rows] = torch.sparse.mm(xt, pc.T).T
        ctx.save_for_backward(gh, gw, gc)
        ctx.n = max(N, 1)
        return total / ctx.n


def full_ce_match(
    h: Tensor, target: Tensor, weight: Tensor, c: Tensor, x: Tensor, chunk_elems: int = 1 << 20
) -> Tensor:
    """Mean softmax cross-entropy over all items of the logits ``h @ weight.T + c @ x.T``:
    h (N, d), target (N,), weight (I, d), c (N, D) dense, x (I, D) sparse COO (constant), by
    :class:`_FusedLinearCE` in chunks of ``chunk_elems // I`` positions."""
    rows = max(1, chunk_elems // max(weight.shape[0], 1))
    xt = x.t().coalesce()
    device = h.device.type
    with _no_autocast(device):
        onednn = device == "cpu" and _onednn_fp32_exact()
        return _FusedLinearCE.apply(h, weight, c, target, x, xt, rows, onednn)


class _FusedSampledCE(_GradInForward):
    """Mean sampled-softmax CE with per-position candidates, gradient computed in forward.

    ``cand`` (N, 1 + K) holds each position's target first, then its negatives; ``valid``
    (N, 1 + K) is False where a negative is an accidental hit of the target (left out of the
    softmax). Per chunk of ``rows`` positions: the candidates' embeddings are gathered
    (rows, 1 + K, d), their logits are one batched product, ``g = softmax - onehot(0)`` is the
    gradient of the chunk's summed loss, ``dh = g @ E`` and ``dW`` gets ``g_k h`` added at each
    candidate's row. Only one chunk's gathered embeddings exist at a time: the unfused
    gather keeps (N, K, d) of them and their gradient alive, 1.7 GB for one batch of 128
    windows of 50 items at d = 256 and K = 256.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, cand: Tensor, valid: Tensor, rows: int) -> Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.dtypes = (h.dtype, weight.dtype)
        h, weight = h.float(), weight.float()
        N, d = h.shape
        gh = torch.empty_like(h) if want_h else None
        gw = torch.zeros_like(weight) if want_w else None
        total = h.new_zeros(())
        for s in range(0, N, rows):
            hc, cc, vc = h[s : s + rows], cand[s : s + rows], valid[s : s + rows]
            # index_select and a (1, d) x (d, 1 + K) product per row: several times faster
            # on CPU than advanced indexing and a (1 + K, d) x (d, 1) one
            e = weight.index_select(0, cc.reshape(-1)).view(*cc.shape, d)  # (r, 1 + K, d)
            lg = torch.bmm(hc[:, None, :], e.transpose(1, 2))[:, 0].masked_fill_(~vc, float("-inf"))
            lse = torch.logsumexp(lg, 1)
            total += (lse - lg[:, 0]).sum()
            if want_h or want_w:
                g = torch.exp_(lg - lse[:, None])
                g[:, 0] -= 1.0
                if want_h:
                    gh[s : s + rows] = torch.bmm(g[:, None, :], e)[:, 0]
                if want_w:
                    gw.index_add_(
                        0, cc.reshape(-1), (g[:, :, None] * hc[:, None, :]).reshape(-1, d)
                    )
        ctx.save_for_backward(gh, gw)
        ctx.n = max(N, 1)
        return total / ctx.n


def sampled_ce(
    h: Tensor, target: Tensor, weight: Tensor, neg: Tensor, chunk_elems: int = 1 << 20
) -> Tensor:
    """Mean softmax CE over each position's target and its own ``neg`` (N, K) items, accidental
    hits of the target left out, by :class:`_FusedSampledCE` in chunks of ``chunk_elems``
    gathered embedding values."""
    cand = torch.cat([target[:, None], neg], 1)
    valid = torch.ones_like(cand, dtype=torch.bool)
    valid[:, 1:] = neg != target[:, None]
    rows = max(1, chunk_elems // (cand.shape[1] * h.shape[1]))
    with _no_autocast(h.device.type):
        return _FusedSampledCE.apply(h, weight, cand, valid, rows)


def _no_autocast(device: str):
    """The fused losses compute in float32 themselves: autocast off where it exists."""
    return (
        torch.autocast(device_type=device, enabled=False) if device in ("cpu", "cuda") else _null()
    )


def full_ce(h: Tensor, target: Tensor, weight: Tensor, chunk_elems: int = 1 << 20) -> Tensor:
    """Mean softmax cross-entropy over all items. h: (N, d), target: (N,), weight: (I, d).

    Computed by :class:`_FusedLinearCE` in chunks of ``chunk_elems // I`` positions (at least
    one): memory is two (rows, I) buffers instead of the (N, I) logits, log-softmax and their
    gradients, and a chunk that stays in cache makes the element-wise passes cheap.
    """
    rows = max(1, chunk_elems // max(weight.shape[0], 1))
    device = h.device.type
    with _no_autocast(device):
        onednn = device == "cpu" and _onednn_fp32_exact()
        return _FusedLinearCE.apply(h, weight, None, target, None, None, rows, onednn)


@contextlib.contextmanager
def _mkldnn_fp32_precision(value: str):
    old = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = value
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


@functools.cache
def _onednn_fp32_exact() -> bool:
    """Whether fp32 CPU products routed to oneDNN (``mkldnn.matmul.fp32_precision='bf16'``)
    stay fp32-exact on this CPU. On CPUs whose oneDNN has no bf16 down-conversion for fp32
    (e.g. AMD Zen 4: AVX512-BF16 but no AMX) the route is plain fp32 and about twice as fast
    as MKL's kernels for these shapes; where oneDNN would really round to bf16 (AMX), it is
    not used and the loss keeps full fp32 products. Only full chunks take this route: oneDNN
    keeps compiled kernels per shape (~1 MB each), and the ragged last chunk of every batch
    would otherwise add a shape per batch size."""
    if not hasattr(torch.backends, "mkldnn") or not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 512, generator=g)
    exact = a.double() @ b.double()
    try:
        with _mkldnn_fp32_precision("bf16"):
            got = (a @ b, torch.mm(b.T.contiguous(), a.T).T)
    except (RuntimeError, ValueError):
        return False
    return all(float((x.double() - exact).abs().max()) < 1e-4 for x in got)


def sequence_loss(
    h: Tensor,
    target: Tensor,
    weight: Tensor,
    loss: str,
    num_negatives: int = 1,
    gbce_t: float = 0.0,
    chunk_elems: int = 1 << 20,
    negatives: Tensor | None = None,
    shared_negatives: bool = False,
) -> Tensor:
    """Scalar loss of ``h`` (N, d) against ``target`` (N,) under ``loss`` (see module doc).

    Negatives are drawn uniformly per position (N, K), or with ``shared_negatives`` once per
    batch (K,) for all positions, as TensorFlow's ``sampled_softmax_loss`` does: one (N, K)
    matrix product and K embedding rows to update instead of N * K. ``negatives`` fixes them
    (tests).
    """
    if loss == "ce":
        return full_ce(h, target, weight, chunk_elems)
    N, n_items = h.shape[0], weight.shape[0]
    neg = negatives
    if neg is None:
        shape = (num_negatives,) if shared_negatives else (N, num_negatives)
        neg = torch.randint(n_items, shape, device=h.device)
    num_negatives = neg.shape[-1]
    if loss == "sampled_ce" and neg.ndim == 2:
        return sampled_ce(h, target, weight, neg, chunk_elems)
    s_pos = (h * weight[target]).sum(-1).float()  # (N,)
    if neg.ndim == 1:  # shared by every position
        s_neg = (h @ weight[neg].T).float()  # (N, K)
        hit = neg[None, :] == target[:, None]
    else:
        s_neg = torch.einsum("nd,nkd->nk", h, weight[neg]).float()  # (N, K)
        hit = neg == target[:, None]  # an accidental positive is not a negative
    if loss == "sampled_ce":
        logits = torch.cat([s_pos[:, None], s_neg.masked_fill(hit, float("-inf"))], 1)
        return F.cross_entropy(logits, torch.zeros(N, dtype=torch.long, device=h.device))
    beta = gbce_beta(num_negatives, n_items, gbce_t) if loss == "gbce" else 1.0
    neg_term = (F.logsigmoid(-s_neg) * ~hit).sum(-1)
    return -(beta * F.logsigmoid(s_pos) + neg_term).mean()


@dataclass(frozen=True)
class SeqObjective:
    """The loss settings of a sequence model (``model.loss``, ``num_negatives``, ``gbce_t``,
    ``ce_chunk``, ``shared_negatives``), validated once, and the loss they define.

    ``scale``: the batch's ``loss_scale`` (:class:`~recsys.data.batches.SeqBatch`, from
    ``data.seq_weight_positions``), which multiplies the mean loss so that every trained position
    weighs the same over an epoch whatever the batch's length (see
    :class:`~recsys.data.loaders.SeqLoader`); None leaves the batch's plain mean.
    """

    loss: str = "ce"
    num_negatives: int = 1
    gbce_t: float = 0.75
    ce_chunk: int = 1 << 20
    shared_negatives: bool = False

    def __post_init__(self) -> None:
        require(self.loss in LOSSES, "loss", self.loss, f"one of {', '.join(LOSSES)}")
        require(self.num_negatives >= 1, "num_negatives", self.num_negatives, "an integer >= 1")
        require(0 <= self.gbce_t <= 1, "gbce_t", self.gbce_t, "in [0, 1]")
        require(self.ce_chunk >= 1, "ce_chunk", self.ce_chunk, "an integer >= 1")
        for key, kind in (
            ("num_negatives", int),
            ("gbce_t", float),
            ("ce_chunk", int),
            ("shared_negatives", bool),
        ):
            object.__setattr__(self, key, kind(getattr(self, key)))

    def __call__(
        self, h: Tensor, target: Tensor, weight: Tensor, scale: Tensor | None = None
    ) -> Tensor:
        """Scalar loss of ``h`` (N, d) against ``target`` (N,) over the item table ``weight``
        (I, d) (:func:`sequence_loss`), times ``scale`` when given."""
        loss = sequence_loss(
            h,
            target,
            weight,
            self.loss,
            self.num_negatives,
            self.gbce_t,
            self.ce_chunk,
            shared_negatives=self.shared_negatives,
        )
        return loss if scale is None else loss * scale

    def next_item(
        self, hidden: Tensor, target: Tensor, pad: int, weight: Tensor, scale: Tensor | None = None
    ) -> Tensor:
        """The same at the non-padding positions of ``hidden`` (B, L, d) / ``target`` (B, L)
        (:func:`next_item_loss`)."""
        loss = next_item_loss(
            hidden,
            target,
            pad,
            weight,
            self.loss,
            self.num_negatives,
            self.gbce_t,
            self.ce_chunk,
            shared_negatives=self.shared_negatives,
        )
        return loss if scale is None else loss * scale


def next_item_loss(
    hidden: Tensor,
    target: Tensor,
    pad: int,
    weight: Tensor,
    loss: str,
    num_negatives: int = 1,
    gbce_t: float = 0.0,
    chunk_elems: int = 1 << 20,
    shared_negatives: bool = False,
) -> Tensor:
    """:func:`sequence_loss` at the non-padding positions of ``hidden`` (B, L, d) / ``target``
    (B, L): the real positions are gathered first, so padding costs nothing in the loss."""
    real = target != pad  # (B, L)
    return sequence_loss(
        hidden[real],
        target[real],
        weight,
        loss,
        num_negatives,
        gbce_t,
        chunk_elems,
        shared_negatives=shared_negatives,
    )
