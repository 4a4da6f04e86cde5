"""The traced history encoder of serving (recsys.serving.history): equal to the eager model.

``TracedHistories`` replaces SASRec's eager ``user_representation`` for anonymous histories in
``recsys.load(...)`` and ``recsys-serve``. It must give the model's vectors (within
``RTOL``/``ATOL``: 1e-5 relative, 1e-6 absolute; the same operations on the same shapes, bitwise
in practice) and so the same top-k items, for every batch size and history length (the graph
is traced once, at one shape), for both block types, and refuse what it does not reproduce.
Item attributes in the traced table: tests/integration/test_serve.py (an exported SASRec with
attributes, ``trace=True`` against ``trace=False``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batches import UserBatch
from recsys.models.bert4rec import BERT4Rec
from recsys.models.sasrec import SASRec
from recsys.serving.history import ATOL, RTOL, TracedHistories

SMALL = dict(max_len=12, hidden_size=16, n_heads=2, inner_size=32)


def _histories(n: int, num_items: int, seed: int = 0) -> list[np.ndarray]:
    """Histories of 1 to 2x max_len items (longer ones are cut to the newest max_len)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_items, size=int(rng.integers(1, 25))) for _ in range(n)]


def _eager(model, users: list[int], hists: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        b = UserBatch.from_lists(users, [h.tolist() for h in hists])
        return model.user_representation(b).float()


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_traced_vectors_and_top_k_equal_the_eager_model(norm_first, n_layers):
    torch.manual_seed(0)
    model = SASRec(
        7, 40, **SMALL, n_layers=n_layers, norm_first=norm_first, scale_embeddings=True
    ).eval()
    probes = list(enumerate(_histories(20, 40)))
    traced, why = TracedHistories.of(model, probes)
    assert traced is not None, why
    items = model.item_vectors().detach()
    hists = _histories(64, 40, seed=1)
    for size in (1, 2, 3, 8, 33, 64):  # batch sizes and lengths the trace never saw
        for start in (0, 64 - size):
            rows = hists[start : start + size]
            want = _eager(model, [-1] * size, rows)
            got = torch.from_numpy(traced(rows))
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
            top_want = (want @ items.T).topk(10).indices
            top_got = (got @ items.T).topk(10).indices
            assert torch.equal(top_got, top_want)


def test_models_it_does_not_reproduce_keep_the_eager_path():
    torch.manual_seed(0)
    probes = list(enumerate(_histories(10, 30)))
    # BERT4Rec encodes bidirectionally with a mask token: the causal trace differs, so refused
    bert = BERT4Rec(5, 30, **SMALL, n_layers=1).eval()
    traced, why = TracedHistories.of(bert, probes)
    assert traced is None and "differ" in why
    training = SASRec(5, 30, **SMALL, n_layers=1)  # dropout on: not an inference model
    assert TracedHistories.of(training, probes) == (None, "the model is in training mode")
    assert TracedHistories.of(SASRec(5, 30, **SMALL, n_layers=1).eval(), [])[0] is None


def test_empty_and_padded_rows_match():
    torch.manual_seed(0)
    model = SASRec(5, 30, **SMALL, n_layers=1).eval()
    traced, why = TracedHistories.of(model, list(enumerate(_histories(10, 30))))
    assert traced is not None, why
    rows = [np.array([], dtype=np.int64), np.array([3]), np.arange(20) % 30]
    torch.testing.assert_close(
        torch.from_numpy(traced(rows)), _eager(model, [-1] * 3, rows), rtol=RTOL, atol=ATOL
    )
