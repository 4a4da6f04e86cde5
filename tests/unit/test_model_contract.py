"""Every model config through the model contract, on tiny synthetic data served by the real
datamodule with the batch shape the model declares (no model is special-cased by name).

Closed-form models (``train_batch is None``) are fitted, then scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.datamodule import RecDataModule
from recsys.data.features import SplitFeatures
from recsys.data.synthetic import load as synthetic_load
from recsys.models.base import build_model
from tests.conftest import TINY_DATA, compose_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
MODEL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def rated_synthetic(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The synthetic log plus a deterministic 1..5 rating per event, so rating models fit too."""
    df = synthetic_load(cfg)
    u = df["user"].to_numpy().astype(np.int64)
    i = df["item"].to_numpy().astype(np.int64)
    return df.assign(rating=(1 + (u * 7 + i * 3) % 5).astype(np.float32))


def setup_model(name: str, seed: int = 0):
    model_cfg = compose_config("train", [f"model={name}"]).model
    # ratings for the rating models; a model that names features keeps the synthetic source,
    # whose item attributes (data.item_features=auto) come with the generated log
    source = [] if model_cfg.get("features") else ["data.source=" + __name__ + ".rated_synthetic"]
    cfg = compose_config(
        "train",
        [f"model={name}", "data=synthetic", *TINY_DATA, *source, "data.batch_size=64"],
    )
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm = RecDataModule(data, seed=seed, eval_batch_size=32)
    dm.setup()
    torch.manual_seed(seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    # what runs.module_for hands a model whose config names features (the cold-start baselines)
    feats = SplitFeatures.of(dm.data) if model_cfg.get("features") else None
    schema = None if feats is None else feats.schema()
    model = build_model(model_cfg, dm.n_users, dm.n_items, feature_schema=schema)
    if feats is not None:
        model.set_features(feats)
    if model.needs_train_matrix:  # what RecModule hands it when fitting starts
        model.set_train_matrix(dm.train_matrix())
    dm.configure_for(model)
    return model, dm


def as_loss(out) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_contract(name: str) -> None:
    model, dm = setup_model(name)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if model.train_batch is None:
        model.fit(dm.train_matrix())
    else:
        assert params, f"{name}: a trained model must have trainable parameters"
        model.train()
        batch = next(iter(dm.train_dataloader()))
        loss = as_loss(model.loss(batch))
        assert loss.ndim == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
        loss.backward()
        for n, p in params.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {n}"
        before = {n: p.detach().clone() for n, p in params.items()}
        torch.optim.Adam(params.values(), lr=1e-2).step()
        for n, p in params.items():
            assert not torch.equal(before[n], p.detach()), (
                f"{name}: {n} did not change after a step"
            )

    model.eval()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        s1 = model.score(batch.users)
        s2 = model.score(batch.users)
    assert s1.shape == (len(batch.users.user), dm.n_items)
    assert not torch.isnan(s1).any(), f"{name}: NaN scores"
    assert torch.equal(s1, s2), f"{name}: evaluation is not deterministic"


# scores_history: popularity scores every history alike (it declares that it needs no user id)
HISTORY_BLIND = {"pop"}


def _histories(dm, n: int) -> list[list[int]]:
    csr = dm.data.train.to_csr()
    rows = [csr.row(u).tolist() for u in range(dm.n_users)]
    return [r for r in rows if len(r) >= 2][:n]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_declared_abilities_are_true_to_behaviour(name: str) -> None:
    """Each declaration of the contract (recsys.models.base) holds for every model config, and
    an ability declared absent raises an error naming its declaration."""
    from recsys.data.batches import UserBatch
    from recsys.data.loaders import TRAIN_LOADERS

    model, dm = setup_model(name)
    assert model.train_batch is None or model.train_batch in TRAIN_LOADERS
    if model.train_batch is None:
        model.fit(dm.train_matrix())
    else:
        batch = next(iter(dm.train_dataloader()))
        if model.train_batch == "pairs":  # the loader draws the negatives the model declares
            assert (batch.neg is None) == (model.num_negatives == 0)
            assert batch.neg is None or batch.neg.shape[1] == model.num_negatives
        else:
            assert model.num_negatives == 0, "only pair models have negatives drawn for them"
    model.eval()
    n_users, n_items = dm.n_users, dm.n_items
    hist = _histories(dm, 3)
    assert 64 <= model.eval_users_per_chunk() <= 1024

    def scores(users: list[int], histories: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return model.score(UserBatch.from_lists(users, histories)).float()

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:  # export's old probe tolerance
        return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))

    # scores_history: the history alone decides the scores (any user id, or -1 for none);
    # otherwise the user id matters
    if model.scores_history:
        s = scores([-1, 0, n_users - 1], [hist[0]] * 3)
        assert torch.isfinite(s).all() and same(s[0], s[1]) and same(s[0], s[2])
        if name not in HISTORY_BLIND:
            s = scores([-1, -1], hist[:2])
            assert not same(s[0], s[1]), f"{name}: different histories, the same scores"
    else:
        s = scores([0, 1], [hist[0]] * 2)
        assert not same(s[0], s[1]), f"{name}: scores ignore the user id; declare scores_history"

    users = UserBatch.from_lists([0, 1, 2], hist)
    with torch.no_grad():
        if model.represents_users:
            rep = model.user_representation(users)
            assert rep.ndim == 2 and rep.shape[0] == 3 and torch.isfinite(rep).all()
            assert torch.equal(rep, model.user_representation(users))
        else:
            with pytest.raises(NotImplementedError, match="represents_users = False"):
                model.user_representation(users)

        if model.exposes_embeddings:
            emb = model.embeddings()
            assert emb["user"].shape[0] == n_users and emb["item"].shape[0] == n_items
            torch.testing.assert_close(emb["user"][:3] @ emb["item"].T, model.score(users))
        else:
            with pytest.raises(NotImplementedError, match="exposes_embeddings = False"):
                model.embeddings()

        u, i = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
        if model.predicts_pairs:
            pred = model.predict(u, i)
            assert pred.shape == (3,) and torch.isfinite(pred).all()
            assert pred[0] != pred[1] and pred[0] != pred[2], f"{name}: predict ignores the pair"
        else:
            with pytest.raises(NotImplementedError, match="predicts_pairs = False"):
                model.predict(u, i)

    # max_len: the window of a sequence model; histories beyond it are cut to it
    if model.train_batch == "sequences":
        L = model.max_len
        assert isinstance(L, int) and L >= 2 and L + 5 < n_items
        long = [(7 * j) % n_items for j in range(L + 5)]
        s = scores([-1] * 3, [long, long[-L:], long[-(L - 2) :]])
        assert same(s[0], s[1]), f"{name}: items older than max_len change the scores"
        # (exactly: an untrained GRU's state hardly remembers an item 48 steps back)
        assert not torch.equal(s[1], s[2]), f"{name}: the window is shorter than max_len - 1"
    else:
        assert model.max_len is None


def test_declarations_must_match_methods():
    """The contract checks itself when a model class is defined: an ability declared without
    its method, a method without its declaration, an unknown batch shape, a closed-form model
    without ``fit``; and build_model only builds Recommenders."""
    from recsys.errors import ConfigError
    from recsys.models.base import Recommender

    with pytest.raises(TypeError, match="represents_users = True but it does not define"):

        class Declared(Recommender):
            represents_users = True

    with pytest.raises(TypeError, match="predicts_pairs = False but it defines predict"):

        class Undeclared(Recommender):
            def predict(self, user, item):
                return user

    with pytest.raises(TypeError, match="train_batch"):

        class Triples(Recommender):
            train_batch = "triples"

    with pytest.raises(TypeError, match="needs fit"):

        class NoFit(Recommender):
            train_batch = None

    with pytest.raises(ConfigError, match="not a recsys.models.base.Recommender"):
        build_model({"_target_": "torch.nn.Linear"}, 3, 4)


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR.parent / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(name):
    """Each shipped experiment file composes (its defaults and overrides exist) and its model
    section builds (no misspelt hyper-parameter), on a tiny id space."""
    cfg = compose_config("train", [f"experiment={name}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    wanted = model_cfg.get("features") or {}
    schema = {  # one small field for each the experiment names (all: one field)
        entity: [
            {"name": str(n), "kind": "categorical", "vocab": ["a", "b"], "width": 2}
            for n in (["attribute"] if wanted.get(entity) == "all" else wanted[entity])
        ]
        if wanted.get(entity)
        else None
        for entity in ("item", "user")
    }
    model = build_model(model_cfg, 6, 9, feature_schema=schema if wanted else None)
    assert model.num_items == 9
    assert model.features_used()["item"] == [f["name"] for f in schema.get("item") or []]
    assert float(cfg.optim.lr) > 0


def test_auto_eval_chunk_is_the_models_and_does_not_change_metrics():
    """``eval.batch_size: null`` takes the model's chunk (~2^18 scores within [64, 1024] users;
    1,024 for sequence models); metrics do not depend on the chunking."""
    assert build_model({"_target_": "recsys.models.mf.MF"}, 10, 1682).eval_users_per_chunk() == 155
    assert build_model({"_target_": "recsys.models.mf.MF"}, 10, 12101).eval_users_per_chunk() == 64
    assert build_model({"_target_": "recsys.models.mf.MF"}, 10, 50).eval_users_per_chunk() == 1024
    sasrec = build_model({"_target_": "recsys.models.sasrec.SASRec"}, 10, 12101)
    assert sasrec.eval_users_per_chunk() == 1024

    from recsys.training.module import RecModule
    from recsys.training.runs import evaluate

    cfg = compose_config("train", TINY_DATA + ["model=mf", "eval.batch_size=null"])
    data, model, ev = (
        OmegaConf.to_container(c, resolve=True) for c in (cfg.data, cfg.model, cfg.eval)
    )
    ev["baseline"] = None
    results = {}
    for bs in (None, 7):
        dm = RecDataModule(data, seed=0, eval_batch_size=bs)
        dm.setup()
        torch.manual_seed(0)
        module = RecModule(model, dm.n_users, dm.n_items, evaluation=ev)
        dm.configure_for(module.model)
        expected = module.model.eval_users_per_chunk() if bs is None else bs
        assert dm.eval_batch_size == expected
        assert len(list(dm.val_dataloader())) == -(-dm.n_users // expected)
        results[bs] = evaluate(module, dm, "val", "cpu")[0]
    assert results[None].keys() == results[7].keys()
    for k, v in results[None].items():
        assert abs(v - results[7][k]) < 1e-6, k
