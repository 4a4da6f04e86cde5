"""SASRec's history-candidate attribute match (``model.features.history_match``) against direct
computations: the term equals a per-user, per-item sum over the history computed from the raw
attribute strings; the fused training loss and its gradients equal an unfused reference; a cold
item's score depends on its attributes only; the score is ``user_representation ·
item_vectors`` (new products included); ``negatives: seen`` leaves unseen items out of the
softmax; a planted attribute signal is learned; the models without the term refuse it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.base import build_model
from recsys.models.seq_losses import full_ce_match
from tests.unit.test_feature_models import (
    N_ITEMS,
    N_USERS,
    N_WARM,
    SEQ,
    attrs_of,
    cold_auc,
    make,
    train_batch,
    world,
)

HM = {"item": "all", "history_match": True}


def reference_x(raw, seen: np.ndarray, vocab: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per categorical field, (I, |vocab|) each item's IDF-weighted unit-length multi-hot, the
    IDF counted over the seen items from the raw strings (values outside the training
    vocabulary dropped)."""
    out = {}
    n_items = len(seen)
    for f, voc in vocab.items():
        held = [set(attrs_of(raw, i).get(f, [])) & set(voc) for i in range(n_items)]
        n = sum(1 for i in range(n_items) if seen[i] and held[i])
        df = {v: sum(1 for i in range(n_items) if seen[i] and v in held[i]) for v in voc}
        x = np.zeros((n_items, len(voc)))
        for i in range(n_items):
            for v in held[i]:
                x[i, voc.index(v)] = math.log((1 + n) / (1 + df[v])) + 1
            norm = np.linalg.norm(x[i])
            if norm > 0:
                x[i] /= norm
        out[f] = x
    return out


def brute_match(model, raw, feats, histories: list[list[int]]) -> np.ndarray:
    """(B, I) ``Σ_f α_f Σ_j γ^(n-1-j) x_f(s_j) · x_f(i)`` over each history's last ``max_len``
    items, one user and one item at a time."""
    attrs = model.item_attrs
    vocab = {n: list(feats.item.field(n).vocab) for n in attrs.cat_names}
    xs = reference_x(raw, feats.item_seen, vocab)
    alpha = model.match.alpha.detach().numpy()
    gamma = float(torch.sigmoid(model.match.decay.detach()))
    out = np.zeros((len(histories), N_ITEMS))
    for b, hist in enumerate(histories):
        window = hist[-model.max_len :]
        for i in range(N_ITEMS):
            total = 0.0
            for k, f in enumerate(attrs.cat_names):
                for j, item in enumerate(window):
                    w = gamma ** (len(window) - 1 - j)
                    total += alpha[k] * w * float(xs[f][item] @ xs[f][i])
            out[b, i] = total
    return out


def randomise(model) -> None:
    """Away from the initial values, so that a wrong weight would show."""
    with torch.no_grad():
        model.match.alpha.copy_(torch.tensor([0.7, -1.3])[: len(model.match.alpha)])
        model.match.decay.fill_(0.4)


def test_the_term_is_its_brute_force_definition() -> None:
    items, _, feats, hist = world()
    model = make("sasrec", HM, feats)
    randomise(model)
    model.eval()
    users = [0, 1, 5]
    # histories longer and shorter than max_len (8), with repeats and cold items in them
    hists = [hist[0] + [N_WARM + 3, 2], hist[1][:3], [N_WARM + 1, N_WARM + 1, 4]]
    batch = UserBatch.from_lists(users, hists)
    with torch.no_grad():
        table = model.item_table()
        dot = model._states(batch, table) @ table[:N_ITEMS].T
        term = model.score(batch) - dot
    want = brute_match(model, items, feats, hists)
    np.testing.assert_allclose(term.numpy(), want, rtol=1e-4, atol=1e-5)
    assert np.abs(want).max() > 0.1


def test_training_loss_and_gradients_equal_the_unfused_reference() -> None:
    """The fused CE with the match term equals ``cross_entropy(h W^T + c x^T)`` over the real
    positions, with the prefix sums ``c`` computed position by position, and so do the
    gradients of α, γ, the attribute tables and the encoder."""
    _, _, feats, hist = world()
    model = make("sasrec", HM, feats)
    randomise(model)
    model.train()
    batch = train_batch("sasrec", model, hist, list(range(12)), torch.Generator().manual_seed(0))
    loss = model.loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    attrs, match = model.item_attrs, model.match
    table = model.item_table()
    h = model.encoder(batch.input, causal=True, table=table)
    x = match.item_rows(attrs)  # (I, D) dense
    gamma = match.gamma()
    real = batch.target != N_ITEMS
    rows = []
    for b in range(batch.input.shape[0]):
        for t in range(batch.input.shape[1]):
            if not real[b, t]:
                continue
            c = torch.zeros(match.dim)
            for j in range(t + 1):
                item = int(batch.input[b, j])
                if item < N_ITEMS:
                    c = c + gamma ** (t - j) * x[item]
            rows.append(c * match.scale())
    c = torch.stack(rows)
    logits = h[real] @ table[:N_ITEMS].T + c @ x.T
    want = F.cross_entropy(logits, batch.target[real])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    names = [n for n, _ in model.named_parameters()]
    for n, g, w in zip(names, grads, want_grads, strict=True):
        if w is None:
            assert g is None or float(g.abs().max()) == 0, n
            continue
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    assert float(grads[names.index("match.alpha")].abs().sum()) > 0
    assert float(grads[names.index("match.decay")].abs()) > 0


def test_fused_match_ce_on_random_inputs_in_several_chunks() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(13, 5, generator=g, requires_grad=True)
    w = torch.randn(40, 5, generator=g, requires_grad=True)
    c = torch.randn(13, 7, generator=g, requires_grad=True)
    dense = (torch.rand(40, 7, generator=g) < 0.3) * torch.rand(40, 7, generator=g)
    target = torch.randint(40, (13,), generator=g)
    got = full_ce_match(h, target, w, c, dense.to_sparse().coalesce(), chunk_elems=40 * 4)
    want = F.cross_entropy(h @ w.T + c @ dense.T, target)
    torch.testing.assert_close(got, want)
    for a, b in zip(
        torch.autograd.grad(got * 3, [h, w, c]),
        torch.autograd.grad(want * 3, [h, w, c]),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_cold_item_score_is_its_attributes_and_a_dot_product() -> None:
    """Cold items 16 and 18 have equal attributes: equal scores for every user, its id
    embedding changes nothing; the score is ``user_representation · item_vectors``, and a new
    product with a cold item's attributes scores what that item scores."""
    items, _, feats, hist = world()
    for features in (HM, {**HM, "ids": False}):
        model = make("sasrec", features, feats)
        randomise(model)
        model.eval()
        batch = UserBatch.from_lists([0, 1, 2, 3], [hist[u] for u in range(4)])
        with torch.no_grad():
            s = model.score(batch)
            torch.testing.assert_close(s[:, 16], s[:, 18])
            assert not torch.allclose(s[:, 16], s[:, 17])
            u = model.user_representation(batch)
            v = model.item_vectors()
            torch.testing.assert_close(u @ v.T, s, rtol=1e-5, atol=1e-5)
            new = model.new_item_vectors(feats.item.encode_rows([attrs_of(items, 16)]))
            torch.testing.assert_close((u @ new.T)[:, 0], s[:, 16], rtol=1e-5, atol=1e-5)
            model.encoder.table().data[16] += 5.0  # the cold item's id row: not used
            torch.testing.assert_close(model.score(batch), s)
            if features.get("ids", True):
                model.encoder.table().data[3] += 5.0  # a warm item's id row: used
                assert not torch.allclose(model.score(batch)[:, 3], s[:, 3])


def test_seen_negatives_leave_unseen_items_out_of_the_softmax() -> None:
    """``negatives: seen``: the loss is the CE over the seen items only, so the cold items'
    attribute-only scores get no gradient from the softmax."""
    _, _, feats, hist = world()
    model = make("sasrec", {**HM, "negatives": "seen"}, feats)
    randomise(model)
    batch = train_batch("sasrec", model, hist, list(range(12)), torch.Generator().manual_seed(0))
    loss = model.loss(batch)
    attrs, match = model.item_attrs, model.match
    table = model.item_table()
    h = model.encoder(batch.input, causal=True, table=table)
    real = batch.target != N_ITEMS
    c = match.history(attrs, batch.input)[real]
    logits = h[real] @ table[:N_WARM].T + c @ match.item_rows(attrs)[:N_WARM].T
    want = F.cross_entropy(logits, batch.target[real])  # warm items are 0..N_WARM-1
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


def test_learns_a_planted_attribute_signal_beyond_ids() -> None:
    """Users of group A only take items of genre A: with the match term the cold items of the
    user's genre rank first (the id-only model is at chance), and training raises α of the
    genre field, the field that carries the signal, above that of the random brand."""
    torch.set_num_threads(1)
    _, _, feats, hist = world()
    results = {}
    for key, features in (("match", {**HM, "ids": False}), ("ids", None)):
        model = make("sasrec", features, feats)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        users = list(range(N_USERS - 2))
        gen = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(40):
            opt.zero_grad()
            model.loss(train_batch("sasrec", model, hist, users, gen)).backward()
            opt.step()
        results[key] = cold_auc("sasrec", model, hist)
        if key == "match":
            names = model.item_attrs.cat_names
            alpha = dict(zip(names, model.match.alpha.tolist(), strict=True))
            assert alpha["genre"] > alpha["brand"], alpha
    assert results["match"] > 0.9, results
    assert 0.25 < results["ids"] < 0.75, results


def test_match_alone_ranks_by_attribute_overlap() -> None:
    """With the encoder's part silenced (all-zero item vectors), the score is the match alone:
    a user whose history is all genre A ranks every genre-A cold item above every genre-B one."""
    _, _, feats, hist = world()
    model = make("sasrec", {**HM, "ids": False}, feats)
    with torch.no_grad():
        model.match.alpha.copy_(torch.tensor([0.0, 1.0]))  # brand 0, genre 1
        for bag in model.item_attrs.bags:
            bag.weight.zero_()
    model.eval()
    with torch.no_grad():
        s = model.score(UserBatch.from_lists([0], [hist[0]]))[0, N_WARM:]
    genre_a = torch.arange(N_WARM, N_ITEMS) % 2 == 0
    assert float(s[genre_a].min()) > float(s[~genre_a].max())


@pytest.mark.parametrize("name", ["bert4rec", "gru4rec"])
def test_other_sequence_models_refuse_the_term(name: str) -> None:
    _, _, feats, _ = world()
    for key, value in (("history_match", True), ("negatives", "seen")):
        with pytest.raises(ConfigError, match=f"model.features.{key}: only SASRec"):
            make(name, {"item": "all", key: value}, feats)


def test_refusals() -> None:
    _, _, feats, _ = world()
    with pytest.raises(ConfigError, match="model.features.history_match: only SASRec"):
        make("mf", HM, feats)
    with pytest.raises(ConfigError, match="loss=ce"):
        build_model(
            {**SEQ["sasrec"], "loss": "bce", "features": HM},
            N_USERS,
            N_ITEMS,
            feature_schema=feats.schema(),
        )
    with pytest.raises(ConfigError, match="negatives must be one of"):
        make("sasrec", {"item": "all", "negatives": "cold"}, feats)
    with pytest.raises(ConfigError, match="needs a categorical item field"):
        make("sasrec", {"item": ["price"], "history_match": True}, feats)


def test_default_off_builds_no_match() -> None:
    """Without the option the model has no match parameters and scores as before."""
    _, _, feats, _ = world()
    model = make("sasrec", {"item": "all"}, feats)
    assert model.match is None
    assert not any(n.startswith("match.") for n, _ in model.named_parameters())


def test_history_match_init_sets_the_initial_weights() -> None:
    _, _, feats, _ = world()
    model = make("sasrec", {**HM, "history_match_init": 3.0}, feats)
    torch.testing.assert_close(model.match.alpha.detach(), torch.full((2,), 3.0))
    with pytest.raises(ConfigError, match="history_match_init needs history_match"):
        make("sasrec", {"item": "all", "history_match_init": 3.0}, feats)
