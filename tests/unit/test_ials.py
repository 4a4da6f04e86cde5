"""iALS: each row's solve against a brute-force weighted least squares in numpy (the normal
equations with the confidence weights), the objective going down over sweeps, and the planted
signal beyond popularity through the real training path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.ials import IALS, solve_side
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

U, I, D = 30, 20, 5  # noqa: E741 - users, items, factors
REG, ALPHA0, NU = 0.1, 0.2, 1.0


def _data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(U, I, generator=g) < 0.3).double()
    dense[3] = 0  # a user without events: its factors are zero
    return dense


def _brute_force(dense: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Row by row, argmin_w Σ_c weight_c (target_c - w·f_c)² + λ_r ‖w‖² as a stacked least-squares
    problem: observed pairs weigh 1 + α₀ towards 1 / (1 + α₀) (that is, (w·f - 1)² + α₀ (w·f)²
    up to a constant), unobserved pairs α₀ towards 0; λ_r = λ (|row| + α₀ C)^ν."""
    out = np.zeros((dense.shape[0], fixed.shape[1]))
    for r, row in enumerate(dense > 0):
        if not row.any():
            continue
        weight = np.where(row, 1 + ALPHA0, ALPHA0)
        target = np.where(row, 1 / (1 + ALPHA0), 0.0)
        lam = REG * (row.sum() + ALPHA0 * dense.shape[1]) ** NU
        a = np.vstack([np.sqrt(weight)[:, None] * fixed, np.sqrt(lam) * np.eye(fixed.shape[1])])
        y = np.concatenate([np.sqrt(weight) * target, np.zeros(fixed.shape[1])])
        out[r] = np.linalg.lstsq(a, y, rcond=None)[0]
    return out


@pytest.mark.parametrize("side", ["users", "items"])
@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_solve_equals_brute_force_weighted_least_squares(solver, side):
    dense = _data()
    model = IALS(U, I, embedding_size=D)
    users, items = model.sides(dense.to_sparse())
    rows, matrix = (users, dense) if side == "users" else (items, dense.T)
    fixed = torch.randn(
        matrix.shape[1], D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    start = torch.randn(matrix.shape[0], D, dtype=torch.float64)
    # D conjugate-gradient steps solve a D-dimensional system exactly (in exact arithmetic)
    got = solve_side(rows, fixed, start, REG, ALPHA0, NU, solver, cg_steps=D)
    want = _brute_force(matrix.numpy(), fixed.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7, atol=1e-9)


def _objective(model: IALS, dense: torch.Tensor) -> float:
    s = model.user_factors @ model.item_factors.T
    obs = dense > 0
    lam_u = REG * (obs.sum(1) + ALPHA0 * I) ** NU
    lam_i = REG * (obs.sum(0) + ALPHA0 * U) ** NU
    return float(
        ((s - 1)[obs] ** 2).sum()
        + ALPHA0 * (s**2).sum()
        + (lam_u * model.user_factors.square().sum(1)).sum()
        + (lam_i * model.item_factors.square().sum(1)).sum()
    )


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_every_sweep_lowers_the_objective(solver):
    """Exact alternating minimisation never raises the objective; warm-started CG (3 steps) in
    practice neither."""
    dense = _data().float()
    model = IALS(U, I, D, reg=REG, unobserved_weight=ALPHA0, reg_exponent=NU, solver=solver)
    torch.manual_seed(0)
    model.user_factors = torch.randn(U, D) * 0.1
    model.item_factors = torch.randn(I, D) * 0.1
    users, items = model.sides(dense.to_sparse())
    values = [_objective(model, dense)]
    for _ in range(5):
        model.sweep(users, items)
        values.append(_objective(model, dense))
    assert all(b <= a * (1 + 1e-5) for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.6 * values[0]


def test_refuses_bad_settings():
    with pytest.raises(ConfigError, match="model.solver"):
        IALS(3, 4, solver="lu")
    with pytest.raises(ConfigError, match="model.unobserved_weight"):
        IALS(3, 4, unobserved_weight=0)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_learns_planted_taste_groups_beyond_popularity(solver, tmp_path):
    overrides = [
        "model=ials",
        f"model.solver={solver}",
        "model.reg=0.03",
        "model.iterations=8",
        "seed=3",
    ]
    m = train(compose_config("train", TINY_DATA + FAST_TRAINER + overrides, tmp_path))
    ours, pop = m["test"]["ndcg@10"], m["baseline"]["test"]["ndcg@10"]
    assert ours > 1.2 * pop, f"ndcg@10 {ours:.4f} vs popularity {pop:.4f}"
