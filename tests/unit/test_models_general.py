"""MF (three losses) and NCF (GMF, MLP, NeuMF): planted signal beyond popularity through the real
training path, NeuMF's batched full ranking against its per-pair network, and pretrained init."""

from __future__ import annotations

import pytest
import torch

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.ncf import GMF, MLP, NeuMF
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

PLANTED = TINY_DATA + FAST_TRAINER + ["optim.lr=0.01", "seed=3", "trainer.max_epochs=5"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mf", "model.loss=softmax"],
        ["model=mf", "model.loss=sampled_softmax", "model.num_negatives=8"],
        ["model=neumf", "model.num_negatives=2"],
    ],
    ids=["mf-softmax", "mf-sampled-softmax", "neumf"],
)
def test_learns_planted_taste_groups_beyond_popularity(overrides, tmp_path):
    m = train(compose_config("train", PLANTED + overrides, tmp_path))
    ours, pop = m["test"]["ndcg@10"], m["baseline"]["test"]["ndcg@10"]
    assert ours > 1.2 * pop, f"{overrides}: ndcg@10 {ours:.4f} vs popularity {pop:.4f}"


@pytest.mark.parametrize("cls", [GMF, MLP, NeuMF])
def test_batched_full_ranking_equals_per_pair_network(cls):
    torch.manual_seed(0)
    model = cls(num_users=7, num_items=11).eval()
    model.score_chunk = 20  # several chunks of users
    users = UserBatch.from_lists([0, 3, 6, 2], [[1], [], [2, 5], [0]])
    with torch.no_grad():
        fast = model.score(users)
        u = users.user[:, None].expand(-1, 11).flatten()
        i = torch.arange(11).repeat(4)
        slow = model.pair_logits(u, i).view(4, 11)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def _save(model, path):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


def test_neumf_starts_from_pretrained_gmf_and_mlp(tmp_path):
    torch.manual_seed(1)
    gmf, mlp = GMF(5, 9, embedding_size=4), MLP(5, 9, embedding_size=3, mlp_hidden_size=[6, 2])
    _save(gmf, tmp_path / "gmf.ckpt")
    _save(mlp, tmp_path / "mlp.ckpt")
    neumf = NeuMF(
        5,
        9,
        mf_embedding_size=4,
        mlp_embedding_size=3,
        mlp_hidden_size=[6, 2],
        dropout=0.0,
        pretrained_gmf=str(tmp_path / "gmf.ckpt"),
        pretrained_mlp=str(tmp_path / "mlp.ckpt"),
        alpha=0.3,
    ).eval()
    mlp.eval()
    users = UserBatch.from_lists([0, 4], [[], []])
    with torch.no_grad():
        expected = 0.3 * gmf.score(users) + 0.7 * mlp.score(users)  # logits are linear in h
        torch.testing.assert_close(neumf.score(users), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="model.pretrained_gmf"):
        NeuMF(
            5,
            9,
            mf_embedding_size=8,
            mlp_embedding_size=3,
            mlp_hidden_size=[6, 2],
            pretrained_gmf=str(tmp_path / "gmf.ckpt"),
            pretrained_mlp=str(tmp_path / "mlp.ckpt"),
        )
    with pytest.raises(ConfigError, match="no such checkpoint"):
        NeuMF(
            5, 9, pretrained_gmf=str(tmp_path / "none"), pretrained_mlp=str(tmp_path / "mlp.ckpt")
        )


def test_mf_refuses_unknown_loss():
    from recsys.models.mf import MF

    with pytest.raises(
        ConfigError, match="model.loss must be one of: bpr, softmax, sampled_softmax"
    ):
        MF(3, 4, loss="hinge")


def test_lookup_equals_embedding_in_values_and_gradients():
    from recsys.models.base import lookup

    torch.manual_seed(0)
    table = torch.nn.Embedding(7, 4)
    idx = torch.tensor([[3, 3, 0], [6, 3, 1]])  # repeated rows accumulate their gradients
    upstream = torch.randn(2, 3, 4)
    out = lookup(table, idx)
    assert torch.equal(out, table(idx))
    (grad,) = torch.autograd.grad((out * upstream).sum(), table.weight)
    (ref,) = torch.autograd.grad((table(idx) * upstream).sum(), table.weight)
    torch.testing.assert_close(grad, ref)
    assert grad[3].abs().sum() > 0 and grad[2].abs().sum() == 0
    padded = torch.nn.Embedding(7, 4, padding_idx=6)  # nn.Embedding's own path: pad gets no grad
    (g,) = torch.autograd.grad(lookup(padded, idx).sum(), padded.weight)
    assert g[6].abs().sum() == 0


@pytest.mark.parametrize("n_neg", [1, 3])
def test_fused_bpr_equals_autograd_in_loss_and_gradients(n_neg):
    from recsys.data.batches import PairBatch
    from recsys.models.mf import MF

    torch.manual_seed(0)
    m = MF(9, 11, 5, loss="bpr", num_negatives=n_neg)
    batch = PairBatch(  # repeated users and items: their gradients accumulate
        user=torch.tensor([0, 3, 3, 8, 0]),
        item=torch.tensor([1, 1, 10, 4, 2]),
        neg=torch.randint(11, (5, n_neg)),
        rating=None,
    )
    fused = m.loss(batch)["loss"]
    g_fused = torch.autograd.grad(fused, [m.user_emb.weight, m.item_emb.weight])
    u, p, q = m.user_emb(batch.user), m.item_emb(batch.item), m.item_emb(batch.neg)
    ref = -torch.nn.functional.logsigmoid(
        (u * p).sum(-1, keepdim=True) - (u[:, None] * q).sum(-1)
    ).mean()
    g_ref = torch.autograd.grad(ref, [m.user_emb.weight, m.item_emb.weight])
    torch.testing.assert_close(fused, ref)
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b)
