"""A traced encoder for the history models of the transformer family (SASRec): a user's vector
in one TorchScript call instead of ~100 Python-level torch calls.

Why. A history request's own compute is small (one history of a few items through one or two
blocks), so the eager path is bound by Python: ~100 torch calls, each taking and releasing the
GIL. In the service the scoring thread then hands the GIL to the event loop and back at each of
them, and every turn costs both threads time. ``torch.jit.trace`` of
:class:`~recsys.models.transformer.LastState` records the same operations once; a call runs them
in C++ with the GIL released for the whole graph.

What it trusts. Nothing from the artifact runs: the graph is traced here, in memory, from the
eager model that :class:`~recsys.serving.artifact.LoadedRecommender` rebuilt from
``weights_only`` tensors by recsys' own code. The model is recognised by what it holds (a
:class:`~recsys.models.transformer.TransformerEncoder` as ``encoder``, ``max_len``, ``pad``,
``item_table()``, no event context) and the traced graph is used only if it reproduces
``model.user_representation`` on real histories of several batch sizes and lengths (known users
and no user, histories longer than ``max_len``); otherwise, or if tracing fails, the eager path
stays. Both the Python API and the HTTP service score through the same object, so their answers
stay equal by construction.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger("recsys")

# the traced scores against the eager model's at load: the same operations on the same shapes
# give the same values (bitwise where measured); anything further off keeps the eager path
RTOL, ATOL = 1e-5, 1e-6


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
        from recsys.data.batches import UserBatch
        from recsys.models.transformer import LastState, TransformerEncoder

        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, TransformerEncoder) or not getattr(model, "scores_history", 0):
            return None, "not a transformer history model"
        if getattr(model, "context_emb", None):
            return None, "the model reads event context"
        if model.training:
            return None, "the model is in training mode"
        max_len, pad = getattr(model, "max_len", None), getattr(model, "pad", None)
        if not isinstance(max_len, int) or not isinstance(pad, int) or max_len < 1:
            return None, "no max_len / pad"
        probes = [(int(u), np.asarray(h, dtype=np.int64)) for u, h in probes if len(h)]
        if not probes:
            return None, "no history to check it on"
        try:
            with torch.inference_mode():
                table = model.item_table().detach()  # the weights themselves, no copy
                module = LastState(encoder, table, causal=True)
                self = cls(None, max_len, pad)
                example = self.padded([h for _, h in probes[:3]])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings: sizes are read from seq
                    self.graph = torch.jit.trace(module, example, check_trace=False)
                # each batch size once, then a few mixed batches: short and long histories, one
                # item, known users and no user (the vector is the history's alone)
                sets = [probes[:1], probes[-1:], probes[:2], probes[1:6], probes[:17], probes]
                for rows in sets:
                    hists = [h for _, h in rows]
                    for users in ([u for u, _ in rows], [-1] * len(rows)):
                        want = model.user_representation(
                            UserBatch.from_lists(users, [h.tolist() for h in hists])
                        ).float()
                        got = torch.from_numpy(self(hists))
                        if got.shape != want.shape or not torch.allclose(
                            got, want, rtol=RTOL, atol=ATOL
                        ):
                            diff = (got - want).abs().max().item() if got.shape == want.shape else 0
                            return None, f"traced vectors differ from the model's ({diff:.2e})"
        except Exception as e:  # noqa: BLE001 - a model that does not trace keeps the eager path
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return None, f"tracing failed ({type(e).__name__}: {first})"
        return self, "traced"

    def padded(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(n, L) the histories' ``max_len`` most recent items, left-padded to the longest (at
        least one column): the layout the eager model encodes after trimming all-padding
        columns (:func:`~recsys.models.seq_padding.trim_padding`)."""
        m = self.max_len
        L = max(1, min(m, max((len(h) for h in histories), default=1)))
        out = np.full((len(histories), L), self.pad, dtype=np.int64)
        for r, h in enumerate(histories):
            if len(h):
                h = h[-L:]
                out[r, L - len(h) :] = h
        return torch.from_numpy(out)

    def __call__(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return self.graph(self.padded(histories)).float().numpy()
