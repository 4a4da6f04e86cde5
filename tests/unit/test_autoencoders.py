"""Mult-VAE and Mult-DAE: the contract, the KL schedule (also across a resume), fold-in scoring,
a planted signal under both protocols, and the ML-20M experiment configs on a tiny stand-in."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.batches import UserBatch
from recsys.data.datamodule import RecDataModule
from recsys.errors import ConfigError
from recsys.models.autoencoders import MultDAE, MultVAE, _Rows
from recsys.models.base import build_model
from recsys.training.runs import load_checkpoint
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

MODELS = {"multvae": MultVAE, "multdae": MultDAE}


def _batch() -> UserBatch:
    return UserBatch.from_lists([0, 1, 2, 3], [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9], [1]])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract(name):
    cfg = OmegaConf.to_container(compose_config("train", [f"model={name}"]).model)
    model = build_model(cfg, num_users=4, num_items=12)
    assert isinstance(model, MODELS[name]) and model.train_batch == "users"
    torch.manual_seed(0)
    model.train()
    out = model.loss(_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    model.eval()
    s1, s2 = model.score(_batch()), model.score(_batch())
    assert s1.shape == (4, 12) and torch.equal(s1, s2)


def test_architecture_follows_hidden_dims():
    vae = MultVAE(num_users=3, num_items=50, hidden_dims=[30, 8])
    assert [(m.in_features, m.out_features) for m in vae.encoder] == [(50, 30), (30, 16)]
    assert [(m.in_features, m.out_features) for m in vae.decoder] == [(8, 30), (30, 50)]
    dae = MultDAE(num_users=3, num_items=50, hidden_dims=[7])
    assert [(m.in_features, m.out_features) for m in (*dae.encoder, *dae.decoder)] == [
        (50, 7),
        (7, 50),
    ]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"hidden_dims": []}, "hidden_dims"),
        ({"dropout": 1.0}, "dropout"),
        ({"anneal_cap": -1}, "anneal_cap"),
        ({"total_anneal_steps": -5}, "total_anneal_steps"),
    ],
)
def test_bad_values_refused(kwargs, key):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        MultVAE(num_users=2, num_items=5, **kwargs)


def test_loss_is_multinomial_nll_plus_beta_kl():
    # independent reference: the same forward pass written out, with beta at the current step
    torch.manual_seed(1)
    model = MultVAE(
        num_users=4,
        num_items=12,
        hidden_dims=[6, 3],
        dropout=0.0,
        anneal_cap=0.5,
        total_anneal_steps=4,
    )
    model.anneal_step.fill_(1)
    model.eval()  # z = mu: deterministic
    out = model.loss(_batch())
    x = _batch().dense(12)
    h = torch.nn.functional.normalize(x, dim=1)
    h = model.encoder[1](torch.tanh(model.encoder[0](h)))
    mu, logvar = h[:, :3], h[:, 3:]
    logits = model.decoder[1](torch.tanh(model.decoder[0](mu)))
    nll = -(torch.log_softmax(logits, 1) * x).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
    assert out["nll"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(nll.item() + 0.25 * kl.item(), rel=1e-5)
    assert int(model.anneal_step) == 1  # evaluation mode does not advance the schedule


def _dense_reference_nll(model, batch: UserBatch):
    """The dense formulation: multi-hot rows, normalise, full matmul, log_softmax * x."""
    x = batch.dense(model.num_items)
    h = torch.nn.functional.normalize(x, dim=1)
    h = torch.addmm(model.encoder[0].bias, h, model.encoder[0].weight)
    for layer in model.encoder[1:]:
        h = layer(torch.tanh(h))
    if isinstance(model, MultVAE):
        h = h[:, : model.latent_dim]
    else:
        h = torch.tanh(h)
    for i, layer in enumerate(model.decoder):
        h = layer(torch.tanh(h) if i else h)
    return -(torch.log_softmax(h, 1) * x).sum(1).mean()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparse_training_path_equals_dense_formulation(name):
    # training never densifies the input; with no dropout its loss and gradients must be those of
    # the dense formulation (repeated items in a history count once, as in dense())
    torch.manual_seed(0)
    dims = [9, 4] if name == "multvae" else [5]
    model = MODELS[name](num_users=5, num_items=15, hidden_dims=dims, dropout=0.0)
    batch = UserBatch.from_lists([0, 1, 2], [[3, 0, 3, 7], [14], [1, 2, 5, 6, 8, 9]])
    model.eval()  # VAE: z = mu, so both sides are deterministic
    out = model.loss(batch)
    ref = _dense_reference_nll(model, batch)
    torch.testing.assert_close(out["nll"], ref)
    grads = torch.autograd.grad(out["nll"], list(model.parameters()))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_sparse_input_dropout_matches_dense_dropout_of_the_same_entries():
    torch.manual_seed(3)
    model = MultDAE(num_users=3, num_items=20, hidden_dims=[6], dropout=0.5)
    batch = UserBatch.from_lists([0, 1], [[1, 4, 4, 9, 13], [2, 19]])
    rows = _Rows(batch, 20)
    v = rows.values(0.5)
    norm = torch.tensor([0.5] * 4 + [2**-0.5] * 2)  # 4 distinct items, then 2
    kept = v != 0
    torch.testing.assert_close(v[kept], 2 * norm[kept])  # kept entries scaled by 1 / (1 - p)
    dense = torch.zeros(2, 20)
    dense[rows.rows, rows.items] = v
    layer = model.encoder[0]
    torch.testing.assert_close(layer.bag(rows.items, rows.starts, v), layer(dense))
    # over many draws about half the entries are kept
    share = torch.stack([(rows.values(0.5) != 0).float().mean() for _ in range(400)]).mean()
    assert 0.45 < float(share) < 0.55


def test_checkpoint_with_linear_input_layer_loads_transposed():
    # checkpoints written when the first encoder layer was an nn.Linear hold its weight as (d, I)
    torch.manual_seed(0)
    model = MultVAE(num_users=3, num_items=12, hidden_dims=[7, 3])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.0.weight"] = state["encoder.0.weight"].t().contiguous()  # (7, 12)
    fresh = MultVAE(num_users=3, num_items=12, hidden_dims=[7, 3])
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh.score(_batch()), model.score(_batch()))


def test_kl_schedule_by_update_count():
    model = MultVAE(
        num_users=4, num_items=12, hidden_dims=[6, 3], anneal_cap=0.3, total_anneal_steps=10
    )
    model.train()
    betas = [model.loss(_batch())["beta"].item() for _ in range(6)]
    assert betas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3])  # step / 10, capped at 0.3
    assert int(model.anneal_step) == 6
    assert "anneal_step" in model.state_dict()  # checkpointed with the weights
    constant = MultVAE(
        num_users=4, num_items=12, hidden_dims=[6, 3], anneal_cap=0.2, total_anneal_steps=0
    )
    assert constant.beta() == 0.2 and constant.beta(10**6) == 0.2


def test_fold_in_scores_equal_known_user_scores(tmp_path):
    cfg = compose_config("train", ["model=multvae", *TINY_DATA], tmp_path)
    dm = RecDataModule(dict(cfg.data), seed=0, eval_batch_size=64)
    model = build_model(OmegaConf.to_container(cfg.model), dm.n_users, dm.n_items)
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dm.configure_for(model)
    for batch in dm.train_dataloader():  # one epoch: weights away from initialisation
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
    model.eval()
    known = next(iter(dm.test_dataloader())).users  # known users, history train + validation
    lengths = known.lengths.tolist()
    items = known.items.tolist()
    histories, start = [], 0
    for n in lengths:  # the same histories, reversed order, as anonymous new users
        histories.append(items[start : start + n][::-1])
        start += n
    new = UserBatch.from_lists([-1] * len(histories), histories)
    torch.testing.assert_close(model.score(new), model.score(known))
    # and one user alone scores as inside the batch
    torch.testing.assert_close(
        model.score(UserBatch.from_lists([-1], histories[3:4]))[0], model.score(known)[3]
    )


def _run(tmp_path, name, extra):
    fast = [o for o in FAST_TRAINER if not o.startswith("trainer.max_epochs")]
    cfg = compose_config(
        "train", [*TINY_DATA, *fast, "data.batch_size=64", *extra], tmp_path / name
    )
    return train(cfg)


def test_vae_learns_and_kl_schedule_resumes(tmp_path):
    # monitor=null: checkpoints (and last.ckpt) at every epoch. Lightning 2.6 refreshes last.ckpt
    # only when a top-k checkpoint is written, i.e. on improvement of the monitored metric.
    common = [
        "model=multvae",
        "model.total_anneal_steps=12",
        "model.anneal_cap=0.5",
        "optim.lr=0.005",
        "callbacks.model_checkpoint.monitor=null",
        "eval.baseline=null",
    ]
    steps_per_epoch = math.ceil(300 / 64)
    _run(tmp_path, "run", [*common, "trainer.max_epochs=2"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert int(load_checkpoint(ckpt)["state_dict"]["model.anneal_step"]) == 2 * steps_per_epoch
    # resume to 4 epochs: the schedule continues from the checkpoint, not from 0
    metrics = _run(tmp_path, "resumed", [*common, "trainer.max_epochs=4", f"ckpt_path={ckpt}"])
    resumed = load_checkpoint(ckpt)  # resuming continues in the checkpoint's run directory
    assert resumed["epoch"] == 3
    assert int(resumed["state_dict"]["model.anneal_step"]) == 4 * steps_per_epoch
    # the beta in effect at the last update: (4 * steps - 1) / 12, capped at 0.5
    assert MultVAE(1, 1, total_anneal_steps=12, anneal_cap=0.5).beta(4 * steps_per_epoch - 1) == 0.5
    # planted taste groups: clearly beyond popularity on the same split (popularity fitted here)
    pop = _popularity_ndcg(tmp_path)
    assert metrics["test"]["ndcg@10"] > pop + 0.03


def _popularity_ndcg(tmp_path) -> float:
    cfg = compose_config("train", [*TINY_DATA], tmp_path)
    dm = RecDataModule(dict(cfg.data), seed=int(cfg.seed), eval_batch_size=512)
    counts = torch.bincount(torch.as_tensor(dm.data.train.item), minlength=dm.n_items).float()
    batch = next(iter(dm.test_dataloader()))
    scores = counts.expand(len(batch.users), -1).clone()
    scores[batch.users.rows(), batch.users.items] = float("-inf")
    target = torch.zeros_like(scores, dtype=torch.bool)
    target[batch.target_rows, batch.target_items] = True
    from recsys.metrics.ranking import ranking_metrics, topk_hits

    return float(
        ranking_metrics(topk_hits(scores, target, 10), target.sum(1), [10], ["ndcg"])[
            "ndcg@10"
        ].mean()
    )


def test_dae_learns_under_strong_generalization(tmp_path):
    # held-out users are scored from their fold-in items only; metrics with NDCG@100-style K list
    metrics = _run(
        tmp_path,
        "dae",
        [
            "model=multdae",
            "data.split=holdout_users",
            "data.n_heldout_users=50",
            "trainer.max_epochs=5",
            "optim.lr=0.005",
            "eval.topk=[10,50]",
            "eval.metrics=[recall_capped,recall,ndcg]",
            "eval.monitor=val/ndcg@50",
        ],
    )
    assert metrics["data"]["n_val_input"] > 0
    assert metrics["test"]["ndcg@10"] > metrics["baseline"]["test"]["ndcg@10"] + 0.03
    assert metrics["test"]["recall_capped@50"] >= metrics["test"]["recall@50"]
    saved = json.loads((tmp_path / "dae" / "metrics.json").read_text())
    assert saved["test"] == metrics["test"]


@pytest.mark.parametrize(("experiment", "run"), [("multvae_ml20m", True), ("multdae_ml20m", False)])
def test_ml20m_experiment_composes_and_runs_on_tiny_standin(tmp_path, experiment, run):
    # data.files=[]: the stand-in reads no file (nothing to download or cache)
    cfg = compose_config(
        "train",
        [
            f"experiment={experiment}",
            "data.source=benchmarks.scripts.ml20m_standin.load",
            "data.files=[]",
            "+data.standin_users=400",
            "+data.standin_items=150",
            "+data.standin_mean_length=30",
            "data.n_heldout_users=40",
            *FAST_TRAINER,
            "trainer.max_epochs=1",
            "eval.batch_size=128",
        ],
        tmp_path,
    )
    # the paper's protocol is what the experiment says
    assert cfg.data.rating_threshold == 4 and cfg.data.min_user_interactions == 5
    assert cfg.data.split == "holdout_users" and cfg.data.fold_in_ratio == 0.8
    assert 100 in cfg.eval.topk and "recall_capped" in cfg.eval.metrics
    if not run:  # Mult-DAE differs only in the model group, which test_contract covers
        return
    metrics = train(cfg)
    assert set(metrics["test"]) >= {"ndcg@100", "recall_capped@20", "recall_capped@50"}
    ranking = {
        k: v
        for k, v in metrics["test"].items()
        if k.split("@")[0] in ("ndcg", "recall", "recall_capped")
    }
    assert len(ranking) == 9 and all(0 <= v <= 1 for v in ranking.values())
