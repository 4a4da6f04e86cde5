"""Behaviour pinned against independent references: export pseudonyms against the standard
library's HMAC, the sequence losses' shared negatives against a direct computation, and the
pair loader's negatives (built from the composed configs, as training builds it) against a set
of the training positives."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from recsys.data.batches import PairBatch
from recsys.models.seq_losses import next_item_loss, sequence_loss
from recsys.serving.artifact import pseudonym
from recsys.training.runs import datamodule_from_config, module_for
from tests.conftest import TINY_DATA, compose_config

# -- pseudonyms: HMAC-SHA256 of str(user) under the key, full hex digest ------------------------


def _hmac_hex(key: bytes, user_text: str) -> str:
    return hmac.new(key, user_text.encode("utf-8"), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "user, text",
    [("u-17", "u-17"), (42, "42"), (0, "0"), (-3, "-3"), ("Zoë 日本", "Zoë 日本"), ("", "")],
)
@pytest.mark.parametrize(
    "key, key_bytes",
    [
        ("s3cret", b"s3cret"),
        (b"s3cret", b"s3cret"),
        ("clé", "clé".encode()),
        (b"\x00\xff\x10raw", b"\x00\xff\x10raw"),
    ],
)
def test_pseudonym_is_hmac_sha256_hex_of_the_user_text(user, text, key, key_bytes):
    got = pseudonym(user, key)
    assert got == _hmac_hex(key_bytes, text)
    assert len(got) == 64 and set(got) <= set("0123456789abcdef")  # the whole digest, hex


def test_pseudonym_depends_on_key_and_user_and_is_stable():
    users = ["alice", "bob", 1, 2, 10]
    for user in users:
        a, b = pseudonym(user, "key-a"), pseudonym(user, "key-b")
        assert a != b  # another key, another pseudonym
        assert pseudonym(user, "key-a") == a  # deterministic
        assert pseudonym(user, b"key-a") == a  # a str key is its UTF-8 bytes
    assert len({pseudonym(u, "key-a") for u in users}) == len(users)
    # the id's text is what is hashed: the integer 7 and the string "7" share a pseudonym
    assert pseudonym(7, "k") == pseudonym("7", "k") == _hmac_hex(b"k", "7")
    # not a plain (unkeyed) hash of the id
    assert pseudonym("alice", "k") != hashlib.sha256(b"alice").hexdigest()


# -- shared negatives in the sequence losses ---------------------------------------------------


def _reference_loss(h, target, weight, neg, loss, gbce_t):
    """Mean over positions of the loss against the shared negatives ``neg`` (K,), computed
    position by position; an accidental hit (a negative equal to the target) is left out."""
    n_items, K = weight.shape[0], len(neg)
    alpha = K / (n_items - 1)
    beta = alpha * (gbce_t * (1 - 1 / alpha) + 1 / alpha) if loss == "gbce" else 1.0
    terms = []
    for p in range(h.shape[0]):
        y = int(target[p])
        keep = [int(j) for j in neg if int(j) != y]  # duplicates in the draw each count
        s_pos = torch.dot(h[p], weight[y])
        s_neg = torch.stack([torch.dot(h[p], weight[j]) for j in keep])
        if loss == "sampled_ce":
            terms.append(-torch.log_softmax(torch.cat([s_pos.view(1), s_neg]), 0)[0])
        else:
            pos_term = F.binary_cross_entropy_with_logits(s_pos, torch.ones_like(s_pos))
            neg_term = F.binary_cross_entropy_with_logits(
                s_neg, torch.zeros_like(s_neg), reduction="sum"
            )
            terms.append(beta * pos_term + neg_term)
    return torch.stack(terms).mean()


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("loss", ["bce", "sampled_ce", "gbce"])
def test_shared_negatives_sequence_loss_matches_a_direct_computation(loss):
    N, K, n_items, d, t, seed = 23, 6, 9, 5, 0.75, 1234
    g = torch.Generator().manual_seed(7)
    h0 = torch.randn(N, d, generator=g)
    w0 = torch.randn(n_items, d, generator=g)
    target = torch.randint(n_items, (N,), generator=g)

    h, w = _leaves(h0, w0)
    torch.manual_seed(seed)
    got = sequence_loss(h, target, w, loss, K, gbce_t=t, shared_negatives=True)
    (3.0 * got).backward()

    # the same draw: one (K,) row from the global generator, shared by every position
    torch.manual_seed(seed)
    neg = torch.randint(n_items, (K,))
    assert (neg[None, :] == target[:, None]).any()  # the check covers accidental hits
    rh, rw = _leaves(h0.double(), w0.double())
    ref = _reference_loss(rh, target, rw, neg, loss, t)
    (3.0 * ref).backward()

    assert got.shape == ()
    assert math.isclose(got.item(), ref.item(), rel_tol=1e-6, abs_tol=1e-6)
    torch.testing.assert_close(h.grad.double(), rh.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), rw.grad, rtol=1e-5, atol=1e-6)
    # passing those negatives explicitly is the same computation
    explicit = sequence_loss(h0, target, w0, loss, K, gbce_t=t, negatives=neg)
    assert math.isclose(explicit.item(), got.item(), rel_tol=1e-6, abs_tol=1e-7)
    # and per-position negatives (same seed) are another draw, another loss
    torch.manual_seed(seed)
    per_position = sequence_loss(h0, target, w0, loss, K, gbce_t=t, shared_negatives=False)
    assert not math.isclose(per_position.item(), got.item(), rel_tol=1e-4)


@pytest.mark.parametrize("loss", ["bce", "sampled_ce", "gbce"])
def test_shared_negatives_next_item_loss_skips_padding_and_matches_a_direct_computation(loss):
    B, L, K, n_items, d, t, seed = 4, 7, 5, 11, 6, 0.3, 99
    pad = n_items
    g = torch.Generator().manual_seed(3)
    hidden0 = torch.randn(B, L, d, generator=g)
    w0 = torch.randn(n_items, d, generator=g)
    target = torch.randint(n_items, (B, L), generator=g)
    for b, n_pad in enumerate([0, 2, 5, 3]):  # left padding of each window
        target[b, :n_pad] = pad

    hidden, w = _leaves(hidden0, w0)
    torch.manual_seed(seed)
    got = next_item_loss(hidden, target, pad, w, loss, K, gbce_t=t, shared_negatives=True)
    got.backward()

    torch.manual_seed(seed)
    neg = torch.randint(n_items, (K,))
    rhid, rw = _leaves(hidden0.double(), w0.double())
    positions = [(b, p) for b in range(B) for p in range(L) if int(target[b, p]) != pad]
    h_real = torch.stack([rhid[b, p] for b, p in positions])
    y_real = torch.tensor([int(target[b, p]) for b, p in positions])
    assert (neg[None, :] == y_real[:, None]).any()
    ref = _reference_loss(h_real, y_real, rw, neg, loss, t)
    ref.backward()

    assert math.isclose(got.item(), ref.item(), rel_tol=1e-6, abs_tol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), rhid.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), rw.grad, rtol=1e-5, atol=1e-6)
    assert hidden.grad[target == pad].abs().max() == 0  # padding positions take no part


# -- the pair loader's negatives, end to end ---------------------------------------------------


def _pair_datamodule(tmp_path, num_negatives: int, batch_size: int):
    cfg = compose_config(
        "train",
        TINY_DATA
        + [
            "model=mf",
            f"model.num_negatives={num_negatives}",
            f"data.batch_size={batch_size}",
            "data.cache=false",
            "trainer.accelerator=cpu",
        ],
        tmp_path,
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    dm = datamodule_from_config(config)
    dm.setup()
    module_for(config, dm)
    return dm


def test_pair_loader_negatives_are_never_a_training_positive_end_to_end(tmp_path):
    K, bs = 4, 97
    dm = _pair_datamodule(tmp_path, K, bs)
    train = dm.data.train
    positives: dict[int, set[int]] = {}
    for u, i in zip(train.user.tolist(), train.item.tolist(), strict=True):
        positives.setdefault(u, set()).add(i)
    pairs = Counter(zip(train.user.tolist(), train.item.tolist(), strict=True))
    # dense users make redraws frequent: the check is not vacuous
    assert max(len(s) for s in positives.values()) > dm.n_items // 4

    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == -(-len(train) // bs)
        negs = []
        for batch in batches:
            assert isinstance(batch, PairBatch)
            assert batch.neg is not None and batch.neg.shape == (len(batch.user), K)
            assert batch.neg.dtype == torch.int64
            assert int(batch.neg.min()) >= 0 and int(batch.neg.max()) < dm.n_items
            for u, row in zip(batch.user.tolist(), batch.neg.tolist(), strict=True):
                bad = [n for n in row if n in positives[u]]
                assert not bad, f"epoch {epoch}: user {u} got training positives {bad}"
            negs.append(batch.neg)
        # every training pair is served exactly once per epoch
        served = Counter(
            (u, i) for b in batches for u, i in zip(b.user.tolist(), b.item.tolist(), strict=True)
        )
        assert served == pairs
        epochs.append(torch.cat(negs))
    assert not torch.equal(epochs[0], epochs[1])  # set_epoch gives the second epoch new draws
