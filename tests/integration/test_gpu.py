"""The CUDA path against the CPU: the same weights score and rank the same, bf16 mixed precision
stays within its rounding of fp32, and an artifact exported from a CUDA run scores the same on
the CPU. Skipped without CUDA (``make gpu-check`` runs them on a GPU machine).

Tolerances, and why:

- **fp32 scores, CPU against GPU, same weights**: the same products summed in another order
  (cuBLAS against the CPU's BLAS, cuDNN attention against the math path); TF32 is off for fp32
  matmuls (PyTorch's default), so a score moves by a few units in the last place of the
  magnitudes summed: ``|Δs| <= 1e-4 * (1 + max |s|)`` leaves ~100x room over that and still
  fails on any real difference (a wrong mask, weights, history, dropout left on).
- **metrics from those scores**: a user's top-K can only change where two of its top-(K+1)
  scores lie within ``2 * max |Δs|`` of each other (a near tie). Every user without a near tie
  must get exactly the same per-user metrics on both devices; a mean may move by at most the share
  of users with one (a per-user metric lies in [0, 1]). The bound is measured, not guessed.
- **bf16 autocast, same weights** (SASRec): bf16 keeps 8 significant bits (unit roundoff
  2^-9 ≈ 0.2% per rounding), and a score passes through about ten (the embedding sum, attention,
  feed-forward, layer norms, the final item dot product), so ``|Δs| <= 0.03 * (1 + max |s|)``
  (measured with the CPU's bf16 autocast on this test's model: 0.2%). Items further than twice the
  measured difference above a user's (K+1)-th fp32 score must stay in its bf16 top-K.
- **bf16-mixed training against fp32 training**, same seed and data: the runs part ways from the
  first rounding, so their test metrics differ by training noise; the per-user NDCG@10 differences
  must average within 3 standard errors of zero (plus 0.01), i.e. bf16 must not cost more than the
  test set can resolve.

``RECSYS_GPU_TESTS_ON=cpu`` runs these tests with the CPU standing in for the GPU: a check of the
tests themselves (both sides then agree exactly), nothing about CUDA.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.training.runs import (
    datamodule_from_config,
    evaluate,
    load_checkpoint,
    module_from_checkpoint,
)
from recsys.training.train import train
from tests.conftest import TINY_DATA, compose_config

STAND_IN = os.environ.get("RECSYS_GPU_TESTS_ON") == "cpu"
DEV = "cpu" if STAND_IN else "cuda"
ACCEL = "cpu" if STAND_IN else "gpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not STAND_IN and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
FP32_TOL = 1e-4  # relative to 1 + max |score|: see the module docstring
BF16_TOL = 0.03
K = 10
MODELS = {
    "mf": ["model=mf"],
    # row-sparse gradients and RowAdagrad: on CUDA through nn.Embedding(sparse=True)
    "mf-sparse": ["model=mf", "model.sparse=true", "optim=row_adagrad", "optim.lr=0.05"],
    "multvae": ["model=multvae", "model.hidden_dims=[64,16]", "optim.lr=0.005"],
    "sasrec": [
        "model=sasrec",
        "model.hidden_size=32",
        "model.n_layers=1",
        "model.inner_size=64",
        "model.max_len=20",
        "optim.lr=0.005",
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train each (model, precision) once on the GPU, on demand: ``runs(name, precision)`` →
    (metrics, run directory)."""
    cache: dict[tuple[str, str], tuple[dict, Path]] = {}

    def get(name: str, precision: str = "32-true") -> tuple[dict, Path]:
        if (name, precision) not in cache:
            out = tmp_path_factory.mktemp(f"{name}-{precision}")
            overrides = (
                TINY_DATA
                + MODELS[name]
                + [
                    f"trainer.accelerator={ACCEL}",
                    f"trainer.precision={precision}",
                    "trainer.enable_progress_bar=false",
                    "trainer.max_epochs=4",
                    "~logger",
                    "seed=11",
                ]
            )
            cache[(name, precision)] = (train(compose_config("train", overrides, out)), out)
        return cache[(name, precision)]

    return get


def _module_and_data(run_dir: Path):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    module = module_from_checkpoint(ckpt).eval()
    dm = datamodule_from_config(ckpt["hyper_parameters"]["config"])
    dm.setup()
    dm.configure_for(module.model)
    return module, dm


def _masked_scores(module, dm, device: str, autocast: bool = False) -> np.ndarray:
    """(test users, items) float64 scores on ``device``, seen items at -inf (as evaluation masks)."""
    module = module.to(device)
    rows = []
    ctx = torch.autocast(device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for batch in dm.test_dataloader():
            users = batch.to(torch.device(device)).users
            s = module.model.score(users).float()
            flat = users.rows() * s.shape[1] + users.items
            rows.append(s.reshape(-1).index_fill(0, flat, float("-inf")).view(s.shape).cpu())
    return torch.cat(rows).double().numpy()


def _near_ties(scores: np.ndarray, band: float, k: int = K) -> np.ndarray:
    """(users,) whether two of a user's top-(k + 1) finite scores lie within ``band``."""
    top = -np.sort(-scores, axis=1)[:, : k + 1]
    gaps = top[:, :-1] - top[:, 1:]
    finite = np.isfinite(top[:, :-1]) & np.isfinite(top[:, 1:])
    return ((gaps <= band) & finite).any(axis=1)


def _check_same_ranking(ref: np.ndarray, other: np.ndarray, rel_tol: float) -> np.ndarray:
    """Scores agree within ``rel_tol``; returns the near-tie users for that difference."""
    assert np.array_equal(np.isinf(ref), np.isinf(other)), "the masks differ"
    fin = np.isfinite(ref)
    delta = float(np.abs(ref[fin] - other[fin]).max())
    scale = 1.0 + float(np.abs(ref[fin]).max())
    assert delta <= rel_tol * scale, f"max |score difference| {delta:.3g} > {rel_tol} * {scale:.3g}"
    return _near_ties(ref, 2 * delta)


def _check_metrics(a: tuple[dict, dict], b: tuple[dict, dict], near: np.ndarray, users: np.ndarray):
    """Per-user metrics equal for users without a near tie; means within the near-tie share."""
    (mean_a, per_a), (mean_b, per_b) = a, b
    assert np.array_equal(per_a["user"], per_b["user"]) and np.array_equal(per_a["user"], users)
    share = float(near.mean())
    for key in mean_a:
        if key in per_a and key != "user":
            clear = ~near
            np.testing.assert_allclose(per_a[key][clear], per_b[key][clear], atol=1e-6, err_msg=key)
        if not key.startswith(("coverage", "gini", "arp")):  # list metrics: not per user
            assert abs(mean_a[key] - mean_b[key]) <= share + 1e-6, (key, mean_a[key], mean_b[key])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cpu_and_gpu_score_and_rank_alike_on_the_same_weights(runs, name):
    metrics, run_dir = runs(name)
    assert metrics["test"]["ndcg@10"] > 0
    module, dm = _module_and_data(run_dir)
    on_cpu = _masked_scores(module, dm, "cpu")
    on_gpu = _masked_scores(module, dm, DEV)
    near = _check_same_ranking(on_cpu, on_gpu, FP32_TOL)
    assert near.mean() < 0.2, "too many near ties for the check to say anything"
    users = dm.test_dataloader().users.cpu().numpy()
    results = {acc: evaluate(module, dm, "test", acc) for acc in ("cpu", ACCEL)}
    _check_metrics(results["cpu"], results[ACCEL], near, users)
    # the run's own test numbers (evaluated on the GPU at the end of training) are these
    assert results[ACCEL][0] == pytest.approx(metrics["test"], abs=1e-6)

    if name == "mf":  # the bench's CUDA measurement path agrees with the run
        from benchmarks.runner.matrix import measure_eval

        module = module.to(DEV)
        out = measure_eval(module, dm, torch.device(DEV))
        assert out["test_check"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
        if not STAND_IN:
            assert torch.cuda.max_memory_allocated() > 0


def test_bf16_autocast_scores_within_rounding_of_fp32_on_the_same_weights(runs):
    _, run_dir = runs("sasrec")
    module, dm = _module_and_data(run_dir)
    fp32 = _masked_scores(module, dm, DEV)
    bf16 = _masked_scores(module, dm, DEV, autocast=True)
    _check_same_ranking(fp32, bf16, BF16_TOL)
    fin = np.isfinite(fp32)
    band = 2 * float(np.abs(fp32[fin] - bf16[fin]).max())
    # an item more than the band above a user's (K+1)-th fp32 score stays in its bf16 top-K
    kth = -np.sort(-fp32, axis=1)[:, K : K + 1]  # (users, 1)
    safe = fp32 > kth + band
    top_bf16 = np.zeros_like(safe)
    np.put_along_axis(top_bf16, np.argsort(-bf16, axis=1, kind="stable")[:, :K], True, axis=1)
    assert (top_bf16 | ~safe).all(), "an item clear of the top-K boundary left the bf16 top-K"
    assert safe.sum() > 0 or band > 0


def test_bf16_mixed_training_within_noise_of_fp32(runs):
    fp32, dir32 = runs("sasrec")
    bf16, dir16 = runs("sasrec", "bf16-mixed")
    assert all(np.isfinite(v) for v in bf16["test"].values())
    a = np.load(dir32 / "per_user_test.npz")
    b = np.load(dir16 / "per_user_test.npz")
    assert np.array_equal(a["user"], b["user"])
    d = b["ndcg@10"] - a["ndcg@10"]
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs(d.mean()) <= 3 * se + 0.01, (fp32["test"]["ndcg@10"], bf16["test"]["ndcg@10"], se)
    # and it learned: better than the popularity baseline of the same split
    assert bf16["test"]["ndcg@10"] > bf16["baseline"]["test"]["ndcg@10"]


@pytest.mark.parametrize("name", ["mf", "sasrec"])
def test_export_from_a_gpu_run_scores_the_same_on_the_cpu(runs, name, tmp_path):
    import recsys
    from recsys.data.batches import UserBatch
    from recsys.serving.export import export

    _, run_dir = runs(name)
    art = export(run_dir, tmp_path / "artifact", onnx=False)
    rec = recsys.load(art)  # on the CPU: nothing here asks for CUDA
    module, dm = _module_and_data(run_dir)
    users = list(range(min(40, dm.n_users)))
    hist = [rec.history(u) for u in users]  # each user's whole history, as served
    on_cpu = rec.score(users, hist).astype(np.float64)
    batch = UserBatch.from_lists(users, [h.tolist() for h in hist]).to(torch.device(DEV))
    with torch.inference_mode():
        on_gpu = module.to(DEV).model.score(batch).float().cpu().double().numpy()
    delta = float(np.abs(on_cpu - on_gpu).max())
    assert delta <= FP32_TOL * (1 + float(np.abs(on_gpu).max())), delta
