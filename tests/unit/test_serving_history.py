"""The fast history encoders of serving (recsys.serving.history): equal to the eager model.

``OneBlockHistories`` (a closed form, one-block models) and ``TracedHistories`` (a traced graph,
any depth) replace SASRec's eager ``user_representation`` for histories in ``recsys.load(...)``
and ``recsys-serve``. Each must give the model's vectors (within ``RTOL``/``ATOL``: 1e-5
relative, 1e-6 absolute; the traced graph is bitwise in practice, the closed form reassociates)
and so the same top-k items, for every batch size and history length (the graph is traced once,
at one shape), for both block types, several heads and both activations, and refuse what it
does not reproduce. Item attributes in the table: tests/integration/test_serve.py (an exported
SASRec with attributes, ``trace=True`` against ``trace=False``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batches import UserBatch
from recsys.models.bert4rec import BERT4Rec
from recsys.models.sasrec import SASRec
from recsys.serving.history import (
    ATOL,
    RTOL,
    OneBlockHistories,
    TracedHistories,
    history_encoder,
)

SMALL = dict(max_len=12, hidden_size=16, n_heads=2, inner_size=32)


def _histories(n: int, num_items: int, seed: int = 0) -> list[np.ndarray]:
    """Histories of 1 to 2x max_len items (longer ones are cut to the newest max_len)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_items, size=int(rng.integers(1, 25))) for _ in range(n)]


def _eager(model, users: list[int], hists: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        b = UserBatch.from_lists(users, [h.tolist() for h in hists])
        return model.user_representation(b).float()


def _assert_reproduces(fast, model, num_items: int) -> None:
    """``fast`` gives the eager vectors and top-10 for batch sizes and lengths it never saw."""
    items = model.item_vectors().detach()
    hists = _histories(64, num_items, seed=1)
    for size in (1, 2, 3, 8, 33, 64):
        for start in (0, 64 - size):
            rows = hists[start : start + size]
            want = _eager(model, [-1] * size, rows)
            got = torch.from_numpy(fast(rows))
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
            top_want = (want @ items.T).topk(10).indices
            top_got = (got @ items.T).topk(10).indices
            assert torch.equal(top_got, top_want)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_traced_vectors_and_top_k_equal_the_eager_model(norm_first, n_layers):
    torch.manual_seed(0)
    model = SASRec(
        7, 40, **SMALL, n_layers=n_layers, norm_first=norm_first, scale_embeddings=True
    ).eval()
    traced, why = TracedHistories.of(model, list(enumerate(_histories(20, 40))))
    assert traced is not None, why
    _assert_reproduces(traced, model, 40)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize(
    "shape", [dict(n_heads=2, activation="gelu"), dict(n_heads=1, activation="relu")]
)
@pytest.mark.parametrize("scale_embeddings", [True, False])
def test_closed_form_vectors_and_top_k_equal_the_eager_model(norm_first, shape, scale_embeddings):
    torch.manual_seed(0)
    settings = {**SMALL, **shape, "n_layers": 1, "norm_first": norm_first}
    model = SASRec(7, 40, **settings, scale_embeddings=scale_embeddings).eval()
    # trained-looking weights: layer norms and biases away from their 1 / 0 initialisation
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or "final_ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    closed, why = OneBlockHistories.of(model, list(enumerate(_histories(20, 40))))
    assert closed is not None, why
    _assert_reproduces(closed, model, 40)


def test_the_encoder_is_the_closed_form_for_one_block_else_the_traced_graph():
    torch.manual_seed(0)
    probes = list(enumerate(_histories(10, 30)))
    one = SASRec(5, 30, **SMALL, n_layers=1).eval()
    fast, path = history_encoder(one, probes)
    assert isinstance(fast, OneBlockHistories) and path == "one block, closed form"
    two = SASRec(5, 30, **SMALL, n_layers=2).eval()
    assert OneBlockHistories.of(two, probes) == (None, "not one block (2)")
    fast, path = history_encoder(two, probes)
    assert isinstance(fast, TracedHistories) and path == "traced"
    bert = BERT4Rec(5, 30, **SMALL, n_layers=1).eval()  # bidirectional + mask token: neither
    fast, why = history_encoder(bert, probes)
    assert fast is None and "differ" in why


@pytest.mark.parametrize("path", [OneBlockHistories, TracedHistories])
def test_models_it_does_not_reproduce_keep_the_eager_path(path):
    torch.manual_seed(0)
    probes = list(enumerate(_histories(10, 30)))
    # BERT4Rec encodes bidirectionally with a mask token: the causal forms differ, so refused
    bert = BERT4Rec(5, 30, **SMALL, n_layers=1).eval()
    fast, why = path.of(bert, probes)
    assert fast is None and "differ" in why
    training = SASRec(5, 30, **SMALL, n_layers=1)  # dropout on: not an inference model
    assert path.of(training, probes) == (None, "the model is in training mode")
    assert path.of(SASRec(5, 30, **SMALL, n_layers=1).eval(), [])[0] is None


@pytest.mark.parametrize("path", [OneBlockHistories, TracedHistories])
def test_empty_and_padded_rows_match(path):
    torch.manual_seed(0)
    model = SASRec(5, 30, **SMALL, n_layers=1).eval()
    fast, why = path.of(model, list(enumerate(_histories(10, 30))))
    assert fast is not None, why
    rows = [np.array([], dtype=np.int64), np.array([3]), np.arange(20) % 30]
    torch.testing.assert_close(
        torch.from_numpy(fast(rows)), _eager(model, [-1] * 3, rows), rtol=RTOL, atol=ATOL
    )
