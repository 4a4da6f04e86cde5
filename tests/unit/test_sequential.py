"""Sequence models (SASRec, BERT4Rec, GRU4Rec), their loss axis, the sequence data path and
sampled evaluation, checked against definitions and brute-force references."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.data.batches import SeqBatch, UserBatch
from recsys.data.datamodule import RecDataModule
from recsys.data.loaders import PairLoader, RowStore, SeqLoader, build_sequences
from recsys.errors import ConfigError
from recsys.models.bert4rec import BERT4Rec
from recsys.models.gru4rec import GRU4Rec
from recsys.models.mf import MF
from recsys.models.sasrec import SASRec
from recsys.models.seq_losses import LOSSES, gbce_beta, sequence_loss
from recsys.training.module import RecModule
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

SMALL = dict(max_len=12, hidden_size=16, n_layers=2, n_heads=2, inner_size=32)


def _models(num_items: int = 30, loss: str = "ce"):
    torch.manual_seed(0)
    return [
        SASRec(5, num_items, **SMALL, loss=loss, num_negatives=3),
        BERT4Rec(5, num_items, **SMALL, loss=loss, num_negatives=3),
        GRU4Rec(
            5, num_items, max_len=12, embedding_size=16, hidden_size=24, loss=loss, num_negatives=3
        ),
    ]


def _store(rows: list[list[int]]) -> RowStore:
    indptr = torch.tensor([0, *np.cumsum([len(r) for r in rows])], dtype=torch.long)
    return RowStore(indptr, torch.tensor([i for r in rows for i in r], dtype=torch.long))


# -- data path --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "windowing,stride", [("windows", None), ("windows", 2), ("windows", 3), ("truncate", None)]
)
def test_build_sequences_against_brute_force(windowing, stride):
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 20, size=n)) for n in (0, 1, 2, 5, 9, 10, 23)]
    max_len, pad = 4, 20
    user, inp, tgt = build_sequences(_store(rows), max_len, pad, windowing, stride)
    got = sorted(
        (int(u), tuple(ri.tolist()), tuple(rt.tolist()))
        for u, ri, rt in zip(user, inp, tgt, strict=True)
    )
    # reference by loops: windows end every `step` transitions counted back from the newest
    step = stride or max_len
    want, trained = [], []
    for u, r in enumerate(rows):
        n = len(r) - 1
        last = n
        while last >= 1:
            ts = [t for t in range(last - max_len + 1, last + 1)]
            oldest = windowing == "truncate" or last - step < 1 or last <= max_len
            i_row = [r[t - 1] if t >= 1 else pad for t in ts]
            t_row = [
                r[t] if t >= 1 and (c >= max_len - step or oldest) else pad
                for c, t in enumerate(ts)
            ]
            want.append((u, tuple(i_row), tuple(t_row)))
            trained += [(u, t) for c, t in enumerate(ts) if t_row[c] != pad]
            if windowing == "truncate" or last <= max_len:
                break
            last -= step
    assert got == sorted(want)
    if windowing == "windows":  # every transition trained exactly once
        assert sorted(trained) == [(u, t) for u, r in enumerate(rows) for t in range(1, len(r))]
    real = (inp != pad).int()  # left-padded
    assert torch.all(real[:, 1:] >= real[:, :-1])


@pytest.mark.parametrize("bucket", [1, 32])
def test_seq_loader_trims_and_covers_every_window_once(bucket):
    rows = [list(range(n)) for n in (3, 7, 2, 15, 4, 30)]
    loader = SeqLoader(_store(rows), max_len=8, pad=99, batch_size=2, seed=1, bucket=bucket)
    loader.sampler.set_epoch(3)
    seen = []
    for b in loader:
        assert b.input.shape[1] <= 8 and (b.target != 99).any(0)[0]  # first column not all pad
        seen += [tuple(t[t != 99].tolist()) for t in b.target]
    ref = [tuple(t[t != 99].tolist()) for t in loader.target]
    assert sorted(seen) == sorted(ref)


def test_seq_bucket_groups_batches_by_length_and_one_means_random_batches():
    rng = np.random.default_rng(0)
    rows = [list(range(int(n))) for n in rng.integers(2, 40, size=600)]

    def spread(bucket: int) -> float:  # mean within-batch range of window lengths
        loader = SeqLoader(_store(rows), max_len=50, pad=999, batch_size=16, seed=1, bucket=bucket)
        return float(np.mean([int(np.ptp((b.input != 999).sum(1).numpy())) for b in loader]))

    assert spread(32) < 3 < 15 < spread(1)

    def sasrec_data(*overrides: str) -> RecDataModule:
        cfg = compose_config("train", ["data=synthetic", *TINY_DATA, *overrides])
        dm = RecDataModule(dict(cfg.data), seed=0)
        dm.setup()
        dm.configure_for(SASRec(dm.n_users, dm.n_items, **SMALL))
        return dm

    for key, bad in (("seq_bucket", 0), ("seq_weight_positions", 2)):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            sasrec_data(f"data.{key}={bad}").train_dataloader()
    # the data config weighs positions unless told not to
    for extra, weighted in (((), True), (("data.seq_weight_positions=false",), False)):
        batch = next(iter(sasrec_data(*extra).train_dataloader()))
        assert (batch.loss_scale is not None) == weighted


def test_weight_positions_makes_every_position_weigh_the_same_over_an_epoch():
    """With length buckets, the batches' mean losses times their ``loss_scale`` average to the
    per-position mean over every window of the epoch, computed here in one pass over all of
    them (the plain means would over-weigh the positions of short windows). The sequence
    models' loss applies the scale; the training step adds nothing to it."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 30, size=int(n)).tolist() for n in rng.integers(2, 20, size=200)]
    torch.manual_seed(0)
    m = SASRec(5, 30, **SMALL, loss="ce").eval()
    loader = SeqLoader(_store(rows), 12, 30, batch_size=16, seed=1)  # weighted by default
    with torch.no_grad():
        batches = list(loader)
        plain = [replace(b, loss_scale=None) for b in batches]
        scaled = sum(float(m.loss(b)) for b in batches) / len(batches)  # scaled by the model
        every = float(m.loss(SeqBatch(loader.user, loader.input, loader.target)))
    assert abs(scaled - every) < 1e-5 * every
    scales = torch.stack([b.loss_scale for b in batches])
    # the scales average one; bucketed batches differ several-fold in positions
    assert abs(float(scales.mean()) - 1) < 1e-6 and float(scales.max() / scales.min()) > 3
    unweighted = SeqLoader(_store(rows), 12, 30, batch_size=16, seed=1, weight_positions=False)
    assert all(b.loss_scale is None for b in unweighted)
    # the model's loss is what applies the scale (bit for bit the plain mean times it), for
    # every sequence model, and the training step passes it through
    module = RecModule({"_target_": "recsys.models.sasrec.SASRec", **SMALL, "loss": "ce"}, 5, 30)
    module.model.load_state_dict(m.state_dict())
    module.model.eval()
    with torch.no_grad():
        got = module._train_loss(batches[0])
        assert torch.equal(got, m.loss(plain[0]) * batches[0].loss_scale)
        for model in _models():
            model.eval()
            torch.manual_seed(1)  # BERT4Rec draws its masks in the loss
            scaled = model.loss(batches[0])
            torch.manual_seed(1)
            assert torch.equal(scaled, model.loss(plain[0]) * batches[0].loss_scale)


# -- model behaviour --------------------------------------------------------------------------
def test_causal_masking_future_item_cannot_change_earlier_positions():
    sas, _, gru = _models()
    for m in (sas, gru):
        m.eval()
        seq = torch.tensor([[30, 30, 4, 7, 1, 9, 2], [3, 5, 8, 11, 2, 6, 0]])
        changed = seq.clone()
        changed[:, -1] = torch.tensor([17, 21])
        encode = m.encode if m is gru else partial(m.encoder, causal=True)
        a, b = encode(seq), encode(changed)
        assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
        assert not torch.allclose(a[:, -1], b[:, -1])


def test_padding_invariance_of_scores():
    histories = [[4, 7, 1], [2, 9, 9, 3, 5, 6, 8, 1, 0, 11, 12, 13, 14, 15], [6]]
    for m in _models():
        m.eval()
        together = m.score(UserBatch.from_lists([0, 1, 2], histories))
        for b, h in enumerate(histories):
            alone = m.score(UserBatch.from_lists([b], [h]))[0]
            assert torch.allclose(together[b], alone, atol=1e-5), type(m).__name__
            # an explicitly left-padded window through the encoder gives the same scores
            h = h[-(m.max_len - 1) :] if isinstance(m, BERT4Rec) else h[-m.max_len :]
            tail = [31] if isinstance(m, BERT4Rec) else []
            seq = torch.tensor([[30] * (m.max_len - len(h) - len(tail)) + h + tail])
            if isinstance(m, GRU4Rec):
                direct = m.encode(seq)[0, -1] @ m.item_weight.T
            else:
                direct = (
                    m.encoder(seq, causal=isinstance(m, SASRec))[0, -1] @ m.encoder.item_weight.T
                )
            assert torch.allclose(direct, alone, atol=1e-5), type(m).__name__


def test_large_batches_scored_in_length_groups_equal_each_user_alone():
    """Batches above the group size are encoded in groups of similar length (each trimmed of its
    padding): every user's scores still equal scoring that user alone."""
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, 30, size=int(n)).tolist() for n in rng.integers(1, 20, size=300)]
    for m in _models():
        m.eval()
        together = m.score(UserBatch.from_lists(list(range(300)), histories))
        alone = torch.cat(
            [m.score(UserBatch.from_lists([u], [h])) for u, h in enumerate(histories)]
        )
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5, msg=type(m).__name__)


def test_scale_embeddings_multiplies_the_input_item_embeddings_by_sqrt_d():
    torch.manual_seed(0)
    scaled = SASRec(5, 30, scale_embeddings=True, **SMALL).eval()
    plain = SASRec(5, 30, **SMALL).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.encoder.item.weight.mul_(math.sqrt(SMALL["hidden_size"]))
    seq = torch.tensor([[30, 3, 7, 1], [4, 4, 9, 2]])
    torch.testing.assert_close(scaled.encoder(seq, causal=True), plain.encoder(seq, causal=True))
    unscaled = SASRec(5, 30, **SMALL).eval()
    unscaled.load_state_dict(scaled.state_dict())  # same weights, no scale: different states
    assert not torch.allclose(scaled.encoder(seq, causal=True), unscaled.encoder(seq, causal=True))


@pytest.mark.parametrize("norm_first", [True, False])
def test_blocks_chosen_by_norm_first_compute_their_definition(norm_first):
    """``norm_first`` picks the block class: pre-LN ``x + attn(LN(x))``, ``x + ff(LN(x))`` with a
    final layer norm, or post-LN ``LN(x + attn(x))``, ``LN(x + ff(x))`` with the embedding sum
    normalised; each written out here by hand (heads, masking and all)."""
    from recsys.models.transformer import PostLNBlock, PreLNBlock, attention_mask

    torch.manual_seed(0)
    m = SASRec(5, 30, **SMALL, norm_first=norm_first, dropout=0.0, attn_dropout=0.0).eval()
    enc, d, H = m.encoder, SMALL["hidden_size"], SMALL["n_heads"]
    assert all(type(b) is (PreLNBlock if norm_first else PostLNBlock) for b in enc.blocks)
    assert isinstance(enc.final_ln if norm_first else enc.emb_ln, torch.nn.LayerNorm)
    assert isinstance(enc.emb_ln if norm_first else enc.final_ln, torch.nn.Identity)
    block = enc.blocks[0]
    x = torch.randn(2, 5, d)
    real = torch.tensor([[False, True, True, True, True], [True] * 5])
    mask = attention_mask(real, causal=True)

    def ln(v, norm):
        return F.layer_norm(v, (d,), norm.weight, norm.bias, norm.eps)

    def attn(v):
        q, k, w = (v @ block.qkv.weight[i * d : (i + 1) * d].T for i in range(3))
        q, k, w = (t + block.qkv.bias[i * d : (i + 1) * d] for i, t in enumerate((q, k, w)))
        heads = []
        for h in range(H):
            sl = slice(h * d // H, (h + 1) * d // H)
            att = (q[..., sl] @ k[..., sl].transpose(1, 2)) / math.sqrt(d // H)
            heads.append(att.masked_fill(~mask[:, 0], float("-inf")).softmax(-1) @ w[..., sl])
        return block.out(torch.cat(heads, -1))

    def ff(v):
        return block.ff2(F.gelu(block.ff1(v)))

    if norm_first:
        y = x + attn(ln(x, block.ln1))
        ref = y + ff(ln(y, block.ln2))
    else:
        y = ln(x + attn(x), block.ln1)
        ref = ln(y + ff(y), block.ln2)
    torch.testing.assert_close(block(x, mask), ref, atol=1e-5, rtol=1e-5)


def test_retired_transformer_options_load_at_their_old_default_only():
    """``null_attention``, ``residual_norm`` and the transformer ``init`` were removed: a config
    from an older checkpoint carrying them at the value that meant "off" still builds the same
    model; any other value is refused by name, and so is a misspelt key."""
    from recsys.models.base import build_model

    base = {"_target_": "recsys.models.sasrec.SASRec", **SMALL}
    old = {**base, "null_attention": "none", "residual_norm": False, "init": "normal"}
    torch.manual_seed(0)
    a = build_model(old, 5, 30)
    torch.manual_seed(0)
    b = build_model(base, 5, 30)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    for key, value in (("null_attention", "padding"), ("residual_norm", True), ("init", "xavier")):
        with pytest.raises(ConfigError, match=f"model.{key} was removed"):
            build_model({**base, key: value}, 5, 30)
        with pytest.raises(TypeError):  # the constructor itself knows nothing of them
            SASRec(5, 30, **SMALL, **{key: value})
    for cls in ("sasrec.SASRec", "bert4rec.BERT4Rec"):
        with pytest.raises(ConfigError, match="model.hiden_size is not a parameter.*hidden_size"):
            build_model({"_target_": f"recsys.models.{cls}", "hiden_size": 8}, 5, 30)
    with pytest.raises(ConfigError, match="model.mask_prob is not a parameter"):
        build_model({**base, "mask_prob": 0.3}, 5, 30)  # BERT4Rec's own key
    with pytest.raises(ConfigError, match="model.n_heads must be a positive divisor"):
        SASRec(5, 30, **{**SMALL, "n_heads": 3})
    with pytest.raises(ConfigError, match="model.mask_prob must be in"):
        BERT4Rec(5, 30, mask_prob=1.5)
    # each model's own defaults: SASRec pre-LN with 1e-8, BERT4Rec post-LN with 1e-12
    sas, bert = SASRec(5, 30).encoder, BERT4Rec(5, 30).encoder
    assert sas.final_ln.eps == 1e-8 and isinstance(sas.emb_ln, torch.nn.Identity)
    assert bert.emb_ln.eps == 1e-12 and isinstance(bert.final_ln, torch.nn.Identity)


def test_padding_embedding_is_zero_and_gets_no_gradient():
    m = SASRec(5, 30, **SMALL)
    seq = torch.tensor([[30, 30, 1, 2, 3]])
    loss = m.encoder(seq, causal=True).sum()
    loss.backward()
    assert torch.all(m.encoder.item.weight[30] == 0)
    assert torch.all(m.encoder.item.weight.grad[30] == 0)


def test_item_dropout_one_mask_for_input_and_output_and_none_at_inference():
    """``item_dropout`` drops entries of the item table once per batch: the input lookup and the
    output layer see the same dropped table (written out here with the same random draw); the
    padding row gets no gradient; in eval mode scores equal a model without it."""
    from recsys.data.batches import SeqBatch
    from recsys.models.seq_losses import next_item_loss

    torch.manual_seed(0)
    kw = dict(SMALL, dropout=0.0, attn_dropout=0.0)
    m = SASRec(5, 30, **kw, item_dropout=0.5).train()
    seq = torch.tensor([[30, 30, 1, 2, 3], [4, 5, 6, 7, 8]])
    tgt = torch.tensor([[30, 1, 2, 3, 9], [5, 6, 7, 8, 10]])
    batch = SeqBatch(torch.tensor([0, 1]), seq, tgt)
    torch.manual_seed(7)
    loss = m.loss(batch)
    torch.manual_seed(7)
    table = F.dropout(m.encoder.item.weight, 0.5)
    h = m.encoder(seq, causal=True, table=table)
    ref = next_item_loss(h, tgt, 30, table[:30], "ce", 1, 0.75, 1 << 20)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.all(m.encoder.item.weight.grad[30] == 0)
    plain = SASRec(5, 30, **kw).eval()
    plain.load_state_dict(m.state_dict())
    users = UserBatch.from_lists([0, 1], [[1, 2, 3], [4, 5, 6, 7, 8]])
    torch.testing.assert_close(m.eval().score(users), plain.score(users))


def test_gbce_matches_direct_computation():
    torch.manual_seed(0)
    N, K, n, d, t = 6, 4, 11, 8, 0.5
    h, w = torch.randn(N, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    target = torch.randint(n, (N,))
    neg = (target[:, None] + torch.randint(1, n, (N, K))) % n  # never the target
    beta = 0.4 * (0.5 * (1 - 1 / 0.4) + 1 / 0.4)  # alpha = K / (n - 1) = 0.4 -> beta = 0.7
    assert math.isclose(gbce_beta(K, n, t), beta) and math.isclose(beta, 0.7)
    assert gbce_beta(K, n, 0.0) == 1.0 and math.isclose(gbce_beta(K, n, 1.0), 0.4)
    p_pos = torch.sigmoid((h * w[target]).sum(1))
    p_neg = torch.sigmoid(torch.einsum("nd,nkd->nk", h, w[neg]))
    direct = (-torch.log(p_pos**beta) - torch.log(1 - p_neg).sum(1)).mean()
    got = sequence_loss(h, target, w, "gbce", gbce_t=t, negatives=neg)
    assert torch.allclose(got.double(), direct, atol=1e-6)
    # t = 0 is plain BCE with the same negatives
    bce = (-torch.log(p_pos) - torch.log(1 - p_neg).sum(1)).mean()
    assert torch.allclose(sequence_loss(h, target, w, "bce", negatives=neg).double(), bce)


def test_sampled_ce_and_full_ce_against_direct_computation():
    torch.manual_seed(1)
    N, K, n, d = 5, 3, 9, 4
    h, w = torch.randn(N, d), torch.randn(n, d)
    target = torch.randint(n, (N,))
    neg = torch.randint(n, (N, K))
    neg[0, 0] = target[0]  # an accidental hit is dropped from the softmax
    logits = h @ w.T
    direct = []
    for r in range(N):
        keep = [int(j) for j in neg[r] if j != target[r]]
        z = torch.cat([logits[r, target[r]].view(1), logits[r, keep]])
        direct.append(-torch.log_softmax(z, 0)[0])
    got = sequence_loss(h, target, w, "sampled_ce", negatives=neg)
    assert torch.allclose(got, torch.stack(direct).mean(), atol=1e-6)
    full = F.cross_entropy(logits, target)
    assert torch.allclose(sequence_loss(h, target, w, "ce"), full, atol=1e-6)
    # the chunked path (recomputed in backward) gives the same value and gradients
    hc, wc = h.clone().requires_grad_(), w.clone().requires_grad_()
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    sequence_loss(hc, target, wc, "ce", chunk_elems=2 * n).backward()
    sequence_loss(hf, target, wf, "ce").backward()
    assert torch.allclose(hc.grad, hf.grad, atol=1e-6) and torch.allclose(
        wc.grad, wf.grad, atol=1e-6
    )


@pytest.mark.parametrize("chunk_elems", [1, 2 * 5 * 6, 7 * 5 * 6, 1 << 20])
def test_fused_sampled_ce_per_position_matches_autograd_of_direct_computation(chunk_elems):
    """Per-position negatives go through the fused sampled softmax (gradient in forward, one
    chunk of gathered candidates at a time): its loss and gradients equal autograd through a
    direct float64 computation, accidental hits left out, also through a tied item table."""
    torch.manual_seed(3)
    N, K, n, d = 19, 4, 13, 6
    h64, w64 = torch.randn(N, d, dtype=torch.float64) * 3, torch.randn(n, d, dtype=torch.float64)
    target, neg = torch.randint(n, (N,)), torch.randint(n, (N, K))
    neg[:4, 1] = target[:4]  # accidental hits

    def direct(h, w):
        s = torch.cat(
            [(h * w[target]).sum(1, keepdim=True), torch.einsum("nd,nkd->nk", h, w[neg])], 1
        )
        s = torch.cat([s[:, :1], s[:, 1:].masked_fill(neg == target[:, None], float("-inf"))], 1)
        return -torch.log_softmax(s, 1)[:, 0].mean()

    ref_h, ref_w = h64.clone().requires_grad_(), w64.clone().requires_grad_()
    (2.5 * direct(ref_h, ref_w)).backward()
    h, w = h64.float().requires_grad_(), w64.float().requires_grad_()
    got = sequence_loss(h, target, w, "sampled_ce", negatives=neg, chunk_elems=chunk_elems)
    (2.5 * got).backward()
    assert math.isclose(float(got), float(direct(h64, w64)), rel_tol=1e-5)
    assert torch.allclose(h.grad.double(), ref_h.grad, atol=1e-5)
    assert torch.allclose(w.grad.double(), ref_w.grad, atol=1e-5)
    emb = torch.nn.Embedding(n, d)
    idx = torch.randint(n, (N,))
    sequence_loss(emb(idx), target, emb.weight, "sampled_ce", negatives=neg).backward()
    g_fused = emb.weight.grad.clone()
    emb.weight.grad = None
    direct(emb(idx), emb.weight).backward()
    assert torch.allclose(g_fused, emb.weight.grad, atol=1e-6)


@pytest.mark.parametrize("chunk_elems", [1, 3 * 40, 7 * 40, 1 << 20])
def test_fused_chunked_ce_matches_torch_cross_entropy(chunk_elems):
    """The fused CE (gradient computed chunk by chunk in forward, never the full logits) gives
    F.cross_entropy's loss and gradients, also with large logits and a weighted upstream grad."""
    torch.manual_seed(2)
    N, n, d = 23, 40, 6
    h64, w64 = torch.randn(N, d, dtype=torch.float64) * 12, torch.randn(n, d, dtype=torch.float64)
    target = torch.randint(n, (N,))
    target[:3] = torch.topk(-(h64[:3] @ w64.T), 1).indices[:, 0]  # p ~ e^-140: 0 in float32
    ref_h, ref_w = h64.clone().requires_grad_(), w64.clone().requires_grad_()
    ref = F.cross_entropy(ref_h @ ref_w.T, target)
    (3.0 * ref).backward()
    h, w = h64.float().requires_grad_(), w64.float().requires_grad_()
    got = sequence_loss(h, target, w, "ce", chunk_elems=chunk_elems)
    (3.0 * got).backward()
    assert math.isclose(float(got), float(ref), rel_tol=1e-5)
    assert torch.allclose(h.grad.double(), ref_h.grad, atol=1e-5)
    assert torch.allclose(w.grad.double(), ref_w.grad, atol=1e-5)
    with torch.no_grad():  # evaluation path: the value alone
        again = sequence_loss(h, target, w, "ce", chunk_elems=chunk_elems)
    assert math.isclose(float(again), float(ref), rel_tol=1e-5)
    # tied weights: the item table used as input and as output layer gets both gradients
    emb = torch.nn.Embedding(n, d)
    idx = torch.randint(n, (N,))
    sequence_loss(emb(idx), target, emb.weight, "ce", chunk_elems=chunk_elems).backward()
    g_fused = emb.weight.grad.clone()
    emb.weight.grad = None
    F.cross_entropy(emb(idx) @ emb.weight.T, target).backward()
    assert torch.allclose(g_fused, emb.weight.grad, atol=1e-6)


def test_bert4rec_masking_rate():
    torch.manual_seed(0)
    m = BERT4Rec(5, 1000, **{**SMALL, "max_len": 50}, mask_prob=0.2)
    n_real = torch.randint(1, 51, (4000,))
    seq = torch.randint(1000, (4000, 50))
    seq[torch.arange(50)[None] < (50 - n_real)[:, None]] = m.pad
    inp, masked = m.mask(seq)
    assert not masked[seq == m.pad].any()  # padding is never masked
    assert torch.equal(inp[masked], torch.full_like(inp[masked], m.mask_id))
    assert torch.equal(inp[~masked], seq[~masked])
    assert masked.any(1).all()  # every window has at least one prediction target
    # each real item masked with p, plus the newest of windows that drew none: E = n p + (1-p)^n
    expected = (n_real * 0.2 + 0.8 ** n_real.double()).sum()
    assert abs(masked.sum().item() - expected.item()) < 4 * math.sqrt(expected.item() * 0.16)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_model_and_loss_trains_one_step(loss):
    rows = [list(np.random.default_rng(u).integers(0, 30, size=4 + u)) for u in range(5)]
    batch = next(iter(SeqLoader(_store(rows), 12, 30, batch_size=5, seed=0)))
    for m in _models(loss=loss):
        m.train()
        before = [p.detach().clone() for p in m.parameters()]
        value = m.loss(batch)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None, f"{type(m).__name__}.{name} got no gradient"
        torch.optim.Adam(m.parameters(), lr=1e-2).step()
        assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


# -- learning planted structure -----------------------------------------------------------
SEQ_DATA = dict(
    n_users=300,
    n_items=300,
    mean_length=30.0,
    n_groups=2,
    p_taste=0.1,
    p_sequential=0.85,
    batch_size=64,
)


def _test_hit10(model, dm: RecDataModule, mask_seen: bool = True) -> float:
    model.eval()
    hist = dm.history("test").to_csr()
    store = RowStore(torch.as_tensor(hist.indptr), torch.as_tensor(hist.indices))
    test = dm.data.test
    users = torch.as_tensor(test.user)
    with torch.no_grad():
        scores = model.score(store.users(users)).float()
        if mask_seen:
            ub = store.users(users)
            scores[ub.rows(), ub.items] = float("-inf")
        top = scores.topk(10, 1).indices
    return float((top == torch.as_tensor(test.item)[:, None]).any(1).float().mean())


def _fit(model, loader, epochs, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            opt.zero_grad()
            out = model.loss(batch)
            (out["loss"] if isinstance(out, dict) else out).backward()
            opt.step()


@pytest.fixture(scope="module")
def planted():
    cfg = compose_config(
        "train", ["data=synthetic", *[f"data.{k}={v}" for k, v in SEQ_DATA.items()]]
    )
    dm = RecDataModule(dict(cfg.data), seed=0)
    dm.setup()
    torch.manual_seed(0)
    pop = torch.as_tensor(dm.data.train.item_counts(), dtype=torch.float32)

    class _Pop(torch.nn.Module):
        def score(self, users):
            return pop.expand(len(users.user), -1)

    mf = MF(dm.n_users, dm.n_items, embedding_size=32, num_negatives=4, reg=1e-4)
    t = dm.data.train
    pairs = PairLoader(
        torch.as_tensor(t.user), torch.as_tensor(t.item), None, dm.n_items, 4, 512, 0
    )
    _fit(mf, pairs, 25, 1e-2)
    return dm, {"popularity": _test_hit10(_Pop(), dm), "mf": _test_hit10(mf, dm)}


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_models_learn_planted_sequential_structure(planted, name):
    dm, baselines = planted
    torch.manual_seed(0)
    kw = dict(max_len=20, dropout=0.1)
    model = {
        "sasrec": lambda: SASRec(
            dm.n_users, dm.n_items, hidden_size=32, inner_size=64, attn_dropout=0.1, **kw
        ),
        "bert4rec": lambda: BERT4Rec(
            dm.n_users,
            dm.n_items,
            hidden_size=32,
            inner_size=64,
            attn_dropout=0.1,
            mask_prob=0.3,
            norm_first=True,
            **kw,
        ),
        "gru4rec": lambda: GRU4Rec(dm.n_users, dm.n_items, embedding_size=32, hidden_size=32, **kw),
    }[name]()
    dm.configure_for(model)
    _fit(model, dm.train_dataloader(), 30 if name == "bert4rec" else 15, 5e-3)
    hit = _test_hit10(model, dm)
    # the successor of the last item is the next item 85% of the time; order-blind models
    # can only guess the taste group
    assert hit > baselines["mf"] + 0.15 and hit > baselines["popularity"] + 0.15, (hit, baselines)


# -- evaluation and the CLI -------------------------------------------------------------------
def test_cli_trains_sequence_model_with_sampled_eval(tmp_path, caplog):
    from recsys.training.train import train

    cfg = compose_config(
        "train",
        [
            *TINY_DATA,
            *FAST_TRAINER,
            "trainer.max_epochs=1",
            "model=bert4rec",
            "model.loss=gbce",
            "model.num_negatives=8",
            "eval.sampled={n:50,strategy:popularity}",
        ],
        tmp_path,
    )
    with caplog.at_level("WARNING", logger="recsys"):
        metrics = train(cfg)
    assert "Krichene & Rendle" in caplog.text
    test = metrics["test"]
    for k in (10, 20):  # ranking among a subset of the items can only move a target up
        assert test[f"sampled_hit@{k}"] >= test[f"hit@{k}"]
    assert test["sampled_hit@20"] > test["hit@20"]


def test_sampled_eval_rejects_bad_settings():
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.sampled"):
        RecModule(
            {"_target_": "recsys.models.popularity.Popularity"},
            3,
            20,
            evaluation={"sampled": {"n": 100, "strategy": "uniform"}},
        )
    with pytest.raises(ConfigError, match="strategy"):
        RecModule(
            {"_target_": "recsys.models.popularity.Popularity"},
            3,
            200,
            evaluation={"sampled": {"n": 100, "strategy": "bogus"}},
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_mixed_precision_on_gpu(tmp_path):
    from recsys.training.train import train

    for model in ("sasrec", "bert4rec"):
        cfg = compose_config(
            "train",
            [
                *TINY_DATA,
                "trainer.accelerator=gpu",
                "trainer.precision=bf16-mixed",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                f"model={model}",
            ],
            tmp_path / model,
        )
        metrics = train(cfg)
        assert all(math.isfinite(v) for v in metrics["test"].values())


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize(("n_layers", "n_heads"), [(1, 1), (2, 2)])
def test_encoder_last_only_equals_the_full_pass_at_the_last_position(norm_first, n_layers, n_heads):
    """SASRec scores a user from the encoder's last position; ``last_only`` computes the last
    block there alone and must give the full pass's values (left padding included)."""
    from recsys.models.transformer import TransformerEncoder, TransformerSettings

    s = TransformerSettings(max_len=20, hidden_size=32, n_layers=n_layers, n_heads=n_heads,
                            inner_size=64, dropout=0.2, attn_dropout=0.2, activation="gelu",
                            norm_first=norm_first, layer_norm_eps=1e-8, init_std=0.02,
                            scale_embeddings=True, item_dropout=0.0, loss="ce", num_negatives=1,
                            gbce_t=0.75, ce_chunk=1 << 20, shared_negatives=False, features=None)  # fmt: skip
    torch.manual_seed(0)
    encoder = TransformerEncoder(50, 1, s).eval()
    seq = torch.randint(0, 50, (7, 12))
    seq[:3, :4] = 50  # left padding
    extra = torch.randn(7, 12, 32)
    with torch.no_grad():
        for kw in ({}, {"extra": extra}):
            full = encoder(seq, causal=True, **kw)[:, -1]
            last = encoder(seq, causal=True, last_only=True, **kw)
            assert last.shape == (7, 1, 32)
            torch.testing.assert_close(last[:, 0], full, rtol=1e-5, atol=1e-6)
