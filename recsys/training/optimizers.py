"""Row-wise Adagrad: an optimizer that applies row-sparse gradients to the rows they hold alone.

With ``nn.Embedding(sparse=True)`` (MF's ``sparse: true``) a step's gradient is a sparse COO
tensor holding one row per lookup of the batch, repeated rows not summed. ``torch.optim.Adam``
refuses it, and a dense update costs the whole table every step: on a 100M-event log MF's dense
Adam step was 3 µs per training pair for 0.5 µs of batch work (benchmarks/scale.md).
:class:`RowAdagrad` reads the sparse gradient's rows and values as they are and writes each
touched row with one scatter-add, so a step costs its batch, whatever the table size. Dense
gradients (other devices or models, ``sparse: false``) take the same update on every row.

On the CPU, ``compile=True`` (the default) runs the update of a sparse gradient's rows as one
compiled loop (:mod:`recsys.compiling`; eager where compiling fails); eager, a sparse
gradient is consumed by the step: its values are scaled in place (one pass less over the
batch's rows than a scaled copy), as ``zero_grad`` then drops it.

``fused=True`` applies the update inside the backward pass instead of in ``step`` (the optimizer
in backward of FBGEMM's and TorchRec's fused embedding tables): a model that declares
``applies_row_updates`` (MF's row-sparse BPR) receives :meth:`RowAdagrad.row_updates` from the
training module and applies them to the gradient rows it computes in its backward, with no
sparse gradient tensor built, stored and read back by ``step`` (benchmarks/scale.md). The
updates are the same (tested). Gradients of such tables never reach ``.grad``, so nothing that
reads gradients may be combined with it: the training module binds the updates only for one
process without gradient clipping or accumulation. Every other parameter, and every model
without the ability, takes the ordinary ``step``.

Its state is plain tensors in ``state_dict()`` (checkpoints load with ``weights_only=True``;
resume is exact). It won on validation against plain SGD on the rows and Adam (benchmarks/scale.md;
``torch.optim.SGD`` takes sparse gradients too, ``optim._target_=torch.optim.SGD``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from recsys.compiling import Compiled


def _rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(n,) row indices and (n, ...) values of a sparse COO gradient (uncoalesced: as built)."""
    return grad._indices()[0], grad._values()


def _add_rows(param: Tensor, rows: Tensor, values: Tensor) -> None:
    """``param[rows] += values`` with repeated rows adding up (a scatter-add over the expanded
    index: ~1.5x faster than ``index_add_`` on CPU for rows of 64 floats)."""
    if param.dim() == 1:
        param.index_add_(0, rows, values)
    else:
        flat = values.reshape(len(rows), -1)
        param.view(len(param), -1).scatter_add_(0, rows[:, None].expand_as(flat), flat)


def _adagrad_rows(
    p: Tensor, acc: Tensor, rows: Tensor, values: Tensor, lr: float, eps: float
) -> None:
    _adagrad_rows_sq(p, acc, rows, values, values.square().mean(1), lr, eps)


def _adagrad_rows_sq(
    p: Tensor, acc: Tensor, rows: Tensor, values: Tensor, sq: Tensor, lr: float, eps: float
) -> None:
    """:func:`_adagrad_rows` given each row's mean squared gradient ``sq`` (n,)."""
    acc.index_add_(0, rows, sq)
    p.index_add_(0, rows, values * (-lr / (acc[rows].sqrt() + eps))[:, None])


_COMPILED_ADAGRAD = Compiled(_adagrad_rows)


@dataclass(frozen=True)
class RowUpdate:
    """An optimizer's in-place update of one table's rows, for a model to call in its backward
    with the gradient rows it computed: ``fn(param, *state, rows, values, *hyper)``, pure tensor
    operations (a model may compile it together with the code that computes ``values``). The
    state and hyper-parameters are read from the optimizer at each call, so a resumed optimizer
    state or a changed learning rate is seen."""

    fn: Callable[..., None]
    compiled: Callable[..., None]  # ``fn`` itself, or its compiled form
    optimizer: torch.optim.Optimizer
    param: Tensor
    group: dict
    state_keys: tuple[str, ...]
    hyper_keys: tuple[str, ...]
    # ``fn`` given each row's mean squared gradient as well, ``(param, *state, rows, values,
    # sq, *hyper)`` with ``sq`` (n,) = ``values.square().mean(1)``, for a caller that knows it
    # without a pass over ``values`` (MF's BPR: from the norms its forward computed); None if
    # the update needs no such statistic
    fn_sq: Callable[..., None] | None = None

    def state(self) -> tuple[Tensor, ...]:
        st = self.optimizer.state[self.param]
        return tuple(st[k] for k in self.state_keys)

    def hyper(self) -> tuple[float, ...]:
        return tuple(self.group[k] for k in self.hyper_keys)

    def args(self) -> tuple[tuple[Tensor, ...], tuple[float, ...]]:
        """The state and hyper-parameters ``fn`` takes around ``(param, ..., rows, values)``."""
        return self.state(), self.hyper()

    def __call__(self, rows: Tensor, values: Tensor) -> None:
        """Apply the gradient ``values`` (n, d) of the table's ``rows`` (n,), repeats adding up."""
        self.compiled(self.param.data, *self.state(), rows, values, *self.hyper())


def row_updates_of(optimizer: object) -> dict[Tensor, RowUpdate]:
    """The in-backward row updates an optimizer offers (``RowAdagrad(fused=True)``), by
    parameter; empty for any other optimizer."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper
    return inner.row_updates() if isinstance(inner, RowAdagrad) and inner.fused else {}


class RowAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad: one accumulator per row (FBGEMM's rowwise Adagrad for embedding tables),
    each occurrence of a row in the gradient counted as its own gradient.

    For a step whose gradient holds rows ``r_1..r_n`` (a row may repeat) with values ``g_k``::

        G[r] += sum over k with r_k = r of mean_j g_kj^2     (mean over the row's d values)
        p[r] -= sum over k with r_k = r of lr * g_k / (sqrt(G[r]) + eps)

    so a row's step size falls with the squared gradient it has received, as Adagrad's, at one
    number per row instead of one per weight. Counting occurrences, not their sum, is LightFM's
    and implicit's per-sample view (a popular item's share of a batch is several samples), and it
    needs no coalescing of the sparse gradient. A dense gradient counts each row once. Rows never
    touched keep their weights and accumulators: lazy and dense updates are the same.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.05,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
        compile: bool = True,
        fused: bool = False,
    ):
        if not 0.0 < float(lr):
            raise ValueError(f"lr must be > 0, got {lr}")
        if initial_accumulator_value < 0:
            raise ValueError(
                f"initial_accumulator_value must be >= 0, got {initial_accumulator_value}"
            )
        super().__init__(
            params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value}
        )
        self.compile = bool(compile)
        self.fused = bool(fused)

    def _state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["sum"] = p.new_full((len(p),), float(group["initial_accumulator_value"]))
        return state

    def row_updates(self) -> dict[Tensor, RowUpdate]:
        """Each 2-d parameter's update as a :class:`RowUpdate` (``fused=True``: the model applies
        it in its backward; ``step`` then finds no gradient for that parameter)."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 2:
                    self._state(p, group)
                    fn = _COMPILED_ADAGRAD if self.compile and p.device.type == "cpu" else None
                    out[p] = RowUpdate(
                        _adagrad_rows,
                        fn or _adagrad_rows,
                        self,
                        p,
                        group,
                        ("sum",),
                        ("lr", "eps"),
                        _adagrad_rows_sq,
                    )
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:
        acc = self._state(p, group)["sum"]  # (rows,)
        # the compiled loop: a sparse gradient of a table on the CPU
        if self.compile and grad.is_sparse and p.dim() == 2 and p.device.type == "cpu":
            _COMPILED_ADAGRAD(p, acc, *_rows(grad), group["lr"], group["eps"])
        elif grad.is_sparse:
            rows, values = _rows(grad)
            flat = values.reshape(len(rows), -1)
            # mean of squares: a norm reads the rows once and writes none
            sq = flat.norm(dim=1).square_().div_(flat.shape[1])
            acc.index_add_(0, rows, sq)
            scale = acc.index_select(0, rows).sqrt_().add_(group["eps"]).reciprocal_()
            _add_rows(p, rows, flat.mul_(scale.mul_(-group["lr"])[:, None]))  # consumed
        else:
            flat = grad.reshape(len(p), -1)
            acc.add_(flat.square().mean(1))
            denom = acc.sqrt().add_(group["eps"])
            p.view(len(p), -1).addcdiv_(flat, denom[:, None], value=-group["lr"])
