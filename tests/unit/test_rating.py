"""Rating prediction: RMSE/MAE against direct computation, Biased MF learning a planted low-rank
structure beyond biases, the rating evaluation task end to end, and the ML-100K official folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.batches import PairBatch
from recsys.data.folds import load_ml100k_fold
from recsys.metrics.rating import error_sums, mae, per_row, pooled, rmse
from recsys.models.biased_mf import BiasedMF
from recsys.training.runs import datamodule_from_config, load_checkpoint, module_from_checkpoint
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config, shared_datasets


def test_rmse_mae_against_direct_computation():
    pred = torch.tensor([3.5, 2.0, 4.0, 1.0, 5.0])
    true = torch.tensor([4.0, 2.0, 2.0, 2.0, 5.0])
    # errors -0.5, 0, 2, -1, 0: squares 0.25, 0, 4, 1, 0
    assert float(rmse(pred, true)) == pytest.approx((5.25 / 5) ** 0.5)
    assert float(mae(pred, true)) == pytest.approx(3.5 / 5)
    rows = torch.tensor([0, 0, 1, 2, 2])
    sums = error_sums(pred, true, rows, 3)
    assert pooled(sums) == pytest.approx({"rmse": (5.25 / 5) ** 0.5, "mae": 0.7})
    per = per_row(sums)
    np.testing.assert_allclose(per["rmse"].numpy(), [0.125**0.5, 2.0, 0.5**0.5])
    np.testing.assert_allclose(per["mae"].numpy(), [0.25, 2.0, 0.5])


def test_pooled_over_chunks_equals_global():
    g = torch.Generator().manual_seed(0)
    pred, true = (
        torch.rand(50, generator=g) * 4 + 1,
        torch.randint(1, 6, (50,), generator=g).float(),
    )
    rows = torch.randint(0, 7, (50,), generator=g)
    parts = [error_sums(pred[s], true[s], rows[s], 7) for s in (slice(0, 20), slice(20, 50))]
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    assert pooled(cat)["rmse"] == pytest.approx(float(rmse(pred, true)))
    assert pooled(cat)["mae"] == pytest.approx(float(mae(pred, true)))


def planted_ratings(n_users=200, n_items=150, rank=3, n=12000, seed=0):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.8, (n_users, rank)), rng.normal(0, 0.8, (n_items, rank))
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    u, i = rng.integers(n_users, size=n), rng.integers(n_items, size=n)
    r = 3.5 + bu[u] + bi[i] + (p[u] * q[i]).sum(1) + rng.normal(0, 0.2, n)
    return [torch.as_tensor(a) for a in (u, i, r.astype(np.float32))]


def fit(model, u, i, r, epochs=25):
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(u), generator=g).split(1000):
            out = model.loss(PairBatch(user=u[idx], item=i[idx], rating=r[idx]))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    return model.eval()


def test_biased_mf_learns_planted_factors_beyond_biases():
    u, i, r = planted_ratings()
    tr, te = slice(0, 10000), slice(10000, None)
    torch.manual_seed(0)
    full = fit(BiasedMF(200, 150, embedding_size=8, reg=0.02), u[tr], i[tr], r[tr])
    biases = fit(BiasedMF(200, 150, embedding_size=0, reg=0.02), u[tr], i[tr], r[tr])
    assert float(full.global_mean) == pytest.approx(float(r[tr].double().mean()), abs=1e-4)
    with torch.no_grad():
        e_full = float(rmse(full.predict(u[te], i[te]), r[te]))
        e_bias = float(rmse(biases.predict(u[te], i[te]), r[te]))
    assert e_full < 0.8 * e_bias, f"rmse factors {e_full:.3f} vs biases only {e_bias:.3f}"


def test_rating_task_reports_the_directly_computed_rmse(tmp_path):
    overrides = (
        TINY_DATA
        + FAST_TRAINER
        + [
            "model=biased_mf",
            "eval=rating",
            "optim.lr=0.01",
            "data.source=tests.unit.test_model_contract.rated_synthetic",
            "+callbacks.epoch_summary.metrics=[train/loss,val/rmse]",
        ]
    )
    m = train(compose_config("train", overrides, tmp_path))
    assert set(m["test"]) == {"rmse", "mae"} and not m["baseline"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    module = module_from_checkpoint(ckpt).eval()
    dm = datamodule_from_config(ckpt["hyper_parameters"]["config"])
    t = dm.data.test
    with torch.no_grad():
        pred = module.model.predict(torch.as_tensor(t.user), torch.as_tensor(t.item)).clamp(1, 5)
    err = pred.double().numpy() - t.rating.astype(np.float64)
    assert m["test"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-6)
    assert m["test"]["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-6)


@pytest.mark.data
@pytest.mark.skipif(shared_datasets() is None, reason="needs the shared ml-100k copy")
@pytest.mark.parametrize("fold", [1, 5])
def test_ml100k_official_fold(fold):
    cfg = {
        "name": "ml-100k-fold",
        "root": str(shared_datasets()),
        "folder": "ml-100k",
        "fold": fold,
        "files": [f"u{fold}.base", f"u{fold}.test"],
        "val_ratio": 0.1,
    }
    split = load_ml100k_fold(cfg)
    assert len(split.test) == 20_000 and len(split.train) + len(split.val) == 80_000
    assert 0.08 * 80_000 < len(split.val) < 0.1 * 80_000
    key = lambda p: set(zip(p.user_ids[p.user], p.item_ids[p.item], strict=True))  # noqa: E731
    assert not key(split.test) & (key(split.train) | key(split.val))
    assert not key(split.train) & key(split.val)
    raw = np.loadtxt(shared_datasets() / "ml-100k" / f"u{fold}.test", dtype=np.int64)
    assert key(split.test) == set(zip(raw[:, 0], raw[:, 1], strict=True))
    assert split.test.rating is not None and set(np.unique(split.test.rating)) <= {1, 2, 3, 4, 5}


def _pairs(inter) -> list[tuple[int, int, float]]:
    return sorted(zip(inter.user.tolist(), inter.item.tolist(), inter.rating.tolist(), strict=True))


RATED = [*TINY_DATA, "data.source=tests.unit.test_model_contract.rated_synthetic"]


def test_refit_full_trains_on_train_plus_validation():
    from omegaconf import OmegaConf

    from recsys.data.pipeline import prepare

    cfg = OmegaConf.to_container(compose_config("train", RATED).data, resolve=True)
    plain = prepare(cfg, seed=0)
    refit = prepare({**cfg, "refit_full": True}, seed=0)
    assert len(plain.val) > 0
    assert _pairs(refit.train) == _pairs(plain.train.concat(plain.val))
    assert _pairs(refit.val) == _pairs(plain.val) and _pairs(refit.test) == _pairs(plain.test)
    assert refit.audit["refit_full"] and "refit_full" not in plain.audit


def test_refit_run_fits_train_plus_validation_for_the_given_epochs(tmp_path):
    """The final fit sees every train + validation rating once per epoch, for exactly
    trainer.max_epochs epochs, and tests the last epoch's model (nothing selected on val)."""
    overrides = [
        *RATED,
        *FAST_TRAINER,  # trainer.max_epochs=3
        "model=biased_mf",
        "eval=rating",
        "+data.refit_full=true",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=epoch",
        "callbacks.model_checkpoint.mode=max",
        "+callbacks.epoch_summary.metrics=[train/loss]",
    ]
    m = train(compose_config("train", overrides, tmp_path))
    from omegaconf import OmegaConf

    from recsys.data.pipeline import prepare

    data_cfg = OmegaConf.to_container(compose_config("train", RATED).data, resolve=True)
    plain = prepare(data_cfg, seed=42)  # the run's seed (train.yaml)
    n_fit = len(plain.train) + len(plain.val)
    assert m["data"]["n_train"] == n_fit and m["timing"]["epochs"] == 3
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert ckpt["epoch"] == 2  # the last of the 3 epochs
    # BiasedMF counts the training ratings it has seen (its running global mean)
    assert float(ckpt["state_dict"]["model.n_seen"]) == 3 * n_fit


def test_rating_experiment_refits_the_validation_selected_settings():
    final = compose_config("train", ["experiment=rating_ml100k"])
    select = compose_config("train", ["experiment=rating_ml100k_val"])
    assert final.data.refit_full and not select.data.refit_full
    assert final.callbacks.early_stopping is None
    assert final.callbacks.model_checkpoint.monitor == "epoch"  # the last epoch, not the best val
    assert final.callbacks.model_checkpoint.mode == "max"
    assert select.callbacks.early_stopping is not None
    assert final.model == select.model and final.optim == select.optim
    assert final.data.batch_size == select.data.batch_size
    assert final.trainer.max_epochs < select.trainer.max_epochs
