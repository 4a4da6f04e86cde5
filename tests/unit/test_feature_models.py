"""Feature-aware models against their definitions: pooled attribute embeddings computed by hand
from the weights, cold items and held-out users represented by their attributes alone, new items
and customers scored like catalogue ones, gradients into the attribute tables, a planted
attribute signal that the id-only model cannot see; and every other model refusing
``model.features`` with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.batches import PairBatch, SeqBatch, UserBatch
from recsys.data.features import RawFeatures, SplitFeatures, encode
from recsys.errors import ConfigError
from recsys.models.base import build_model
from recsys.models.features import AttributeEmbedding, _bag_mean, entity_rows, entity_table
from recsys.trust import resolve
from tests.conftest import compose_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
MODEL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def raw_table(entity: str, cats: dict[str, list[list[str]]], nums: dict[str, list[float]]):
    """RawFeatures of ``n`` entities (ids 0..n-1): per categorical field a list of value lists,
    per numeric field a list of floats (NaN: missing)."""
    n = len(next(iter(cats.values())))
    rows = [(r, f, v) for f, col in cats.items() for r, vals in enumerate(col) for v in vals]
    cat = pd.DataFrame(rows, columns=["row", "field", "value"]).astype({"row": np.int64})
    num = {k: np.asarray(v, dtype=np.float64) for k, v in nums.items()}
    return RawFeatures(entity, np.arange(n, dtype=np.int64), cat, num, "test")


def attrs_of(raw: RawFeatures, r: int) -> dict[str, Any]:
    """Entity ``r``'s attributes as the dict a new entity is described by."""
    cat = raw.categorical
    out: dict[str, Any] = {
        f: sorted(cat[(cat["row"] == r) & (cat["field"] == f)]["value"]) for f in set(cat["field"])
    }
    out.update({k: float(v[r]) for k, v in raw.numeric.items()})
    return out


# -- pooling against its definition ---------------------------------------------------------


@pytest.mark.parametrize("pool", ["sum", "concat"])
def test_pooled_attributes_are_their_definition(pool: str) -> None:
    """Each field: the mean of its values' embeddings (no value: zero); numeric fields: one
    linear map of the standardised values; ``sum`` adds the parts, ``concat`` projects their
    concatenation. Computed by hand from the raw strings, the vocabularies and the weights."""
    raw = raw_table(
        "item",
        {
            "genre": [["a"], ["b"], ["a"], ["c"], []],
            "tags": [["x", "y", "z"], ["y"], [], ["x", "z"], ["w", "y"]],
        },
        {"price": [1.0, 3.0, np.nan, 8.0, 2.0], "weight": [0.5, 0.5, 1.5, 2.5, 0.0]},
    )
    t = encode(raw, np.arange(5), np.ones(5, bool))
    torch.manual_seed(0)
    d = 3
    emb = AttributeEmbedding(t.schema(), 5, d, pool, init_std=0.5)
    emb.load(t, np.ones(5))
    with torch.no_grad():
        out = emb()
        for r in range(5):
            parts = []
            for k, name in enumerate(emb.cat_names):
                vocab = list(t.field(name).vocab)
                vals = sorted(set(attrs_of(raw, r).get(name, [])))
                rows = [emb.bags[k].weight[vocab.index(v) + 1] for v in vals]
                parts.append(torch.stack(rows).mean(0) if rows else torch.zeros(d))
            x = []
            for name in emb.num_names:
                f = t.field(name)
                v = raw.numeric[name][r]
                x.append(0.0 if np.isnan(v) else (v - f.mean) / f.std)
            parts.append(emb.num.weight @ torch.tensor(x, dtype=torch.float32))
            if pool == "sum":
                want = sum(parts)
            else:
                want = emb.proj.weight @ torch.cat(parts) + emb.proj.bias
            torch.testing.assert_close(out[r], want, rtol=1e-5, atol=1e-6)
        # some rows only, and new entities described by the same attributes
        idx = torch.tensor([3, 0, 3, 4])
        torch.testing.assert_close(emb(idx), out[idx])
        new = t.encode_rows([attrs_of(raw, r) for r in (1, 3)])
        torch.testing.assert_close(emb.encode_table(new), out[[1, 3]])
        # an unknown value counts as no value
        unknown = t.encode_rows([{**attrs_of(raw, 1), "genre": ["never seen"]}])
        no_genre = t.encode_rows([{k: v for k, v in attrs_of(raw, 1).items() if k != "genre"}])
        torch.testing.assert_close(emb.encode_table(unknown), emb.encode_table(no_genre))


def test_entity_rows_are_the_rows_of_the_table() -> None:
    """``entity_rows`` (a batch's rows only) equals the rows of ``entity_table``; without a
    training event an entity has no id part; with id dropout an entity drawn twice in a batch is
    dropped in both places, and about ``id_dropout`` of the entities are."""
    raw = raw_table("item", {"g": [["a"], ["b"], ["a"], ["b"]] * 25}, {})
    t = encode(raw, np.arange(100), np.ones(100, bool))
    torch.manual_seed(0)
    attrs = AttributeEmbedding(t.schema(), 100, 4, "sum", 0.3)
    seen = np.arange(100) % 5 != 0
    attrs.load(t, seen)
    ids = torch.nn.Embedding(100, 4)
    idx = torch.tensor([[3, 5, 3], [10, 99, 5]])
    with torch.no_grad():
        table = entity_table(ids.weight, attrs, True, 0.0, False)
        rows = entity_rows(idx, ids, attrs, True, 0.0, False)
        torch.testing.assert_close(rows, table[idx])
        for j in range(100):
            want = attrs()[j] + (ids.weight[j] if seen[j] else 0)
            torch.testing.assert_close(table[j], want)
        torch.testing.assert_close(entity_rows(idx, ids, attrs, False, 0.0, False), attrs()[idx])
        # given the id table itself, and a batch of more rows than entities (the whole table)
        torch.testing.assert_close(entity_rows(idx, ids.weight, attrs, True, 0.0, False), rows)
        big = torch.arange(100).flip(0).repeat(2).view(4, 50)
        torch.testing.assert_close(
            entity_rows(big, ids.weight, attrs, True, 0.0, False), table[big]
        )
        torch.testing.assert_close(entity_rows(big, ids, attrs, True, 0.0, False), table[big])
        idx = torch.arange(100).repeat(2)
        torch.manual_seed(1)
        rows = entity_rows(idx, ids, attrs, True, 0.5, True)
        kept = (rows - attrs()[idx]).abs().sum(1) > 0  # (200,) id part present
        assert torch.equal(kept[:100], kept[100:])
        assert not kept[:100][torch.as_tensor(~seen)].any()
        assert 0.3 < kept[:100][torch.as_tensor(seen)].float().mean() < 0.7


# -- the feature-aware models ---------------------------------------------------------------

N_WARM, N_COLD, N_USERS = 16, 40, 20
N_ITEMS = N_WARM + N_COLD
GENRES = ["A", "B"]

SEQ = {
    "sasrec": {
        "_target_": "recsys.models.sasrec.SASRec",
        "max_len": 8,
        "hidden_size": 16,
        "n_layers": 1,
        "n_heads": 1,
        "inner_size": 32,
        "dropout": 0.0,
        "attn_dropout": 0.0,
    },
    "bert4rec": {
        "_target_": "recsys.models.bert4rec.BERT4Rec",
        "max_len": 8,
        "hidden_size": 16,
        "n_layers": 1,
        "n_heads": 1,
        "inner_size": 32,
        "dropout": 0.0,
        "attn_dropout": 0.0,
        "mask_prob": 0.4,
    },
    "gru4rec": {
        "_target_": "recsys.models.gru4rec.GRU4Rec",
        "max_len": 8,
        "embedding_size": 16,
        "hidden_size": 16,
        "dropout": 0.0,
    },
}
PAIR = {
    "mf": {"_target_": "recsys.models.mf.MF", "embedding_size": 16},
    "gmf": {"_target_": "recsys.models.ncf.GMF", "embedding_size": 16, "init_std": 0.1},
    "mlp": {
        "_target_": "recsys.models.ncf.MLP",
        "embedding_size": 16,
        "mlp_hidden_size": [16],
        "dropout": 0.0,
        "init_std": 0.1,
    },
    "neumf": {
        "_target_": "recsys.models.ncf.NeuMF",
        "mf_embedding_size": 8,
        "mlp_embedding_size": 8,
        "mlp_hidden_size": [16],
        "dropout": 0.0,
        "init_std": 0.1,
    },
}
MODELS = {**SEQ, **PAIR}


def genre_of_item(i: int) -> str:
    return GENRES[i % 2]


def world():
    """Items alternate genres A/B; items 0..N_WARM-1 have training events, the rest are cold;
    items 16 and 18 (cold) have the same attributes. Users alternate groups; a user's history
    is 8 warm items of the group's genre. Users 18 and 19 are held out (no training events),
    with equal attributes."""
    rng = np.random.default_rng(0)
    brands = [["p", "q", "r"][rng.integers(3)] for _ in range(N_ITEMS)]
    price = rng.normal(10, 3, N_ITEMS)
    brands[18], price[18] = brands[16], price[16]
    items = raw_table(
        "item",
        {"genre": [[genre_of_item(i)] for i in range(N_ITEMS)], "brand": [[b] for b in brands]},
        {"price": list(price)},
    )
    age = rng.normal(40, 10, N_USERS)
    age[19] = age[18]
    segment = [[GENRES[u % 2]] for u in range(N_USERS)]
    segment[19] = segment[18]
    users = raw_table("user", {"segment": segment}, {"age": list(age)})
    histories = []
    for u in range(N_USERS):
        own = [i for i in range(N_WARM) if genre_of_item(i) == GENRES[u % 2]]
        histories.append([int(x) for x in rng.permutation(own)])
    train_users = N_USERS - 2
    item_seen = np.arange(N_ITEMS) < N_WARM
    user_seen = np.arange(N_USERS) < train_users
    feats = SplitFeatures(
        item=encode(items, np.arange(N_ITEMS), item_seen),
        user=encode(users, np.arange(N_USERS), user_seen),
        item_seen=item_seen,
        user_seen=user_seen,
    )
    return items, users, feats, histories


def make(name: str, features: dict | None, feats: SplitFeatures, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        {**MODELS[name], "features": features}, N_USERS, N_ITEMS, feature_schema=feats.schema()
    )
    if features:
        model.set_features(feats)
    return model


def item_id_tables(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "item" in n and "attrs" not in n]


def user_id_tables(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "user" in n and "attrs" not in n]


def eval_users(name: str, histories: list[list[int]], users: list[int]) -> UserBatch:
    ids = [-1] * len(users) if name in SEQ else users
    return UserBatch.from_lists(ids, [histories[u] for u in users])


def train_batch(name: str, model, histories, users, gen: torch.Generator):
    if name in SEQ:
        L = model.max_len
        inp = torch.full((len(users), L), N_ITEMS, dtype=torch.long)
        tgt = inp.clone()
        for r, u in enumerate(users):
            h = histories[u][-(L + 1) :]
            inp[r, L - len(h) + 1 :] = torch.tensor(h[:-1])
            tgt[r, L - len(h) + 1 :] = torch.tensor(h[1:])
        if name == "bert4rec":  # BERT4Rec's windows are its target rows
            tgt = inp.clone()
            tgt[:, -1] = torch.tensor([histories[u][-1] for u in users])
            tgt[:, :-1] = inp[:, 1:]
        return SeqBatch(user=torch.tensor(users), input=inp, target=tgt)
    pairs = [(u, i) for u in users for i in histories[u]]
    user = torch.tensor([p[0] for p in pairs])
    item = torch.tensor([p[1] for p in pairs])
    neg = torch.randint(0, N_ITEMS, (len(pairs), 2), generator=gen)
    return PairBatch(user=user, item=item, neg=neg)


def loss_of(out) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out


def scores_and_vectors(name: str, model, users: UserBatch, new_items: torch.Tensor):
    """(B, I) catalogue scores and (B, m) scores of new items given by their vectors."""
    s = model.score(users)
    if name in SEQ:
        return s, model.user_representation(users) @ new_items.T
    return s, model.score_vectors(model.user_vectors(users.user), new_items)


@pytest.mark.parametrize("pool", ["sum", "concat"])
@pytest.mark.parametrize("name", list(MODELS))
def test_cold_item_is_its_attributes(name: str, pool: str) -> None:
    """A cold item (no training event) is scored from its attributes alone: two cold items with
    equal attributes score equally for every user, its id embedding changes nothing (a warm
    item's does), and a new item with the same attributes (``new_item_vectors``) scores what the
    catalogue item scores."""
    items, _, feats, hist = world()
    model = make(name, {"item": "all", "pool": pool}, feats)
    model.eval()
    users = eval_users(name, hist, list(range(N_USERS - 2)))
    new = feats.item.encode_rows([attrs_of(items, 16), attrs_of(items, 3)])
    with torch.no_grad():
        vecs = model.new_item_vectors(new)
        s, s_new = scores_and_vectors(name, model, users, vecs)
        torch.testing.assert_close(s[:, 16], s[:, 18])
        assert not torch.allclose(s[:, 16], s[:, 17])
        torch.testing.assert_close(s_new[:, 0], s[:, 16])
        torch.testing.assert_close(model.item_vectors()[16], vecs[0])
        assert not torch.allclose(s_new[:, 1], s[:, 3]), "a warm item has its id part too"
        # random directions: a layer-normed state is orthogonal to a constant shift
        gen = torch.Generator().manual_seed(1)
        for w in item_id_tables(model):
            w[16:N_ITEMS].add_(torch.randn(w[16:N_ITEMS].shape, generator=gen))
        torch.testing.assert_close(model.score(users)[:, 16:], s[:, 16:])
        for w in item_id_tables(model):
            w[3].add_(torch.randn(w[3].shape, generator=gen))
        assert not torch.allclose(model.score(users)[:, 3], s[:, 3])


@pytest.mark.parametrize("name", list(PAIR))
def test_held_out_user_is_its_attributes(name: str) -> None:
    """MF and NCF with user attributes: a user without training events is scored from its
    attributes alone (equal attributes, equal scores; its id embedding changes nothing), and a
    new customer described by them (``new_user_vectors``) gets the same scores."""
    _, users_raw, feats, hist = world()
    model = make(name, {"item": "all", "user": "all"}, feats)
    model.eval()
    users = UserBatch.from_lists([17, 18, 19], [hist[17], hist[18], hist[19]])
    with torch.no_grad():
        s = model.score(users)
        torch.testing.assert_close(s[1], s[2])
        assert not torch.allclose(s[0], s[1])
        new = model.new_user_vectors(feats.user.encode_rows([attrs_of(users_raw, 18)]))
        torch.testing.assert_close(model.score_vectors(new, model.item_vectors())[0], s[1])
        torch.testing.assert_close(new[0], model.user_vectors(torch.tensor([18]))[0])
        gen = torch.Generator().manual_seed(1)
        for w in user_id_tables(model):
            w[18:].add_(torch.randn(w[18:].shape, generator=gen))
        torch.testing.assert_close(model.score(users)[1:], s[1:])


@pytest.mark.parametrize("pool", ["sum", "concat"])
@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_the_attribute_tables(name: str, pool: str) -> None:
    _, _, feats, hist = world()
    user = {"user": "all"} if name in PAIR else {}
    model = make(name, {"item": "all", "pool": pool, **user}, feats)
    model.train()
    gen = torch.Generator().manual_seed(0)
    loss_of(model.loss(train_batch(name, model, hist, list(range(N_USERS - 2)), gen))).backward()
    named = [(n, p) for n, p in model.named_parameters() if "attrs" in n]
    # item: genre, brand, price (+ projection weight and bias); user: segment, age (+ the same)
    assert len(named) == (3 if pool == "sum" else 5) + (
        0 if not user else 2 if pool == "sum" else 4
    )
    for n, p in named:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {n}"


def test_mf_with_features_keeps_sparse_gradients() -> None:
    """``sparse: true`` with attributes: the id tables still get row-sparse gradients (the
    attribute tables dense ones) and a row-wise Adagrad step moves both."""
    from recsys.training.optimizers import RowAdagrad

    _, _, feats, hist = world()
    torch.manual_seed(0)
    cfg = {**PAIR["mf"], "sparse": True, "features": {"item": "all", "user": "all"}}
    model = build_model(cfg, N_USERS, N_ITEMS, feature_schema=feats.schema())
    model.set_features(feats)
    model.train()
    batch = train_batch("mf", model, hist, [0, 1, 2], torch.Generator().manual_seed(0))
    loss_of(model.loss(batch)).backward()
    assert model.user_emb.weight.grad.is_sparse and model.item_emb.weight.grad.is_sparse
    assert not model.item_attrs.bags[0].weight.grad.is_sparse
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    RowAdagrad(model.parameters(), lr=0.1, compile=False).step()
    for n, p in model.named_parameters():
        assert not torch.equal(before[n], p.detach()), f"{n} did not move"


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_sequence_models_refuse_user_attributes(name: str) -> None:
    _, _, feats, _ = world()
    with pytest.raises(ConfigError, match=r"model.features.user: .* by the history alone"):
        make(name, {"item": "all", "user": "all"}, feats)
    with pytest.raises(ConfigError, match=r"model.features.user: .* by the history alone"):
        build_model(
            {**SEQ["bert4rec"], "features": {"user": "all"}}, N_USERS, N_ITEMS, None, feats.schema()
        )


def test_new_entities_need_features() -> None:
    """An id-only model refuses to score a new item or customer, by name."""
    _, _, feats, _ = world()
    rows = feats.item.encode_rows([{"genre": "A"}])
    for name in MODELS:
        model = make(name, None, feats)
        with pytest.raises(ConfigError, match="uses no item features"):
            model.new_item_vectors(rows)
    for name in PAIR:
        with pytest.raises(ConfigError, match="uses no user features"):
            make(name, {"item": "all"}, feats).new_user_vectors(rows)


def cold_auc(name: str, model, hist) -> float:
    """Mean over users of the AUC of the cold items of the user's genre against the other cold
    items (0.5: chance)."""
    model.eval()
    users = list(range(N_USERS - 2))
    with torch.no_grad():
        s = model.score(eval_users(name, hist, users))[:, N_WARM:]
    genre = np.array([genre_of_item(i) for i in range(N_WARM, N_ITEMS)])
    aucs = []
    for r, u in enumerate(users):
        mine = torch.as_tensor(genre == GENRES[u % 2])
        pos, neg = s[r, mine], s[r, ~mine]
        aucs.append(float((pos[:, None] > neg[None, :]).float().mean()))
    return float(np.mean(aucs))


def train(name: str, features: dict | None, steps: int = 60) -> float:
    _, _, feats, hist = world()
    model = make(name, features, feats)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    users = list(range(N_USERS - 2))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model.loss(train_batch(name, model, hist, users, gen))).backward()
        opt.step()
    return cold_auc(name, model, hist)


@pytest.mark.parametrize("name", list(MODELS))
def test_learns_a_planted_attribute_signal_on_cold_items(name: str) -> None:
    """Users of group A only ever take items of genre A (B likewise); the evaluated items are
    cold. With item attributes the model ranks the cold items of the user's genre first; the
    id-only model, which never saw them, is at chance."""
    torch.set_num_threads(1)
    with_features = train(name, {"item": "all"})
    ids_only = train(name, None)
    assert with_features > 0.9, f"{name}: cold AUC {with_features:.3f} with attributes"
    assert 0.25 < ids_only < 0.75, f"{name}: cold AUC {ids_only:.3f} with ids only"


# -- the models that cannot use features ----------------------------------------------------


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_models_without_features_refuse_them_with_their_reason(name: str) -> None:
    """``model.features={item: all}`` on a model that cannot use attributes is one ConfigError
    line naming the model and its own reason (not the generic default); null builds."""
    cfg = OmegaConf.to_container(compose_config("train", [f"model={name}"]).model, resolve=True)
    assert "features" in cfg, f"configs/model/{name}.yaml has no features key"
    cls = resolve(cfg["_target_"], "model", "model._target_", None)
    if cls.uses_features:
        return
    assert cfg["features"] is None
    assert cls.no_features != "it has no feature inputs", f"{name}: say why it has no features"
    build_model(cfg, 6, 9)
    with pytest.raises(ConfigError) as e:
        build_model({**cfg, "features": {"item": "all"}}, 6, 9)
    msg = str(e.value)
    assert msg.startswith(f"model.features: {cls.__name__} cannot use features ({cls.no_features})")
    assert "\n" not in msg


def test_id_only_configs_build_no_attribute_modules() -> None:
    """``features: null``: no attribute module, the same parameters in the same order as the
    id-only model had (seeded runs unchanged)."""
    _, _, feats, _ = world()
    for name in MODELS:
        a = make(name, None, feats)
        b = make(name, {"item": "all"}, feats)
        names_a = [n for n, _ in a.named_parameters()]
        names_b = [n for n, _ in b.named_parameters()]
        assert not any("attrs" in n for n in names_a)
        assert names_b[: len(names_a)] == names_a  # attribute modules come after the id ones
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=False):
            assert torch.equal(p, q), f"{name}: {n} initialised differently with features"


def test_bag_mean_is_the_embedding_bag():
    """The ONNX form of the attribute pooling equals ``EmbeddingBag(mode="mean",
    padding_idx=0)``: rows with repeats, padding anywhere, and none at all."""
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(7, 5, mode="mean", padding_idx=0)
    codes = torch.tensor([[1, 2, 0, 0], [3, 3, 6, 0], [0, 0, 0, 0], [0, 4, 0, 5], [6, 1, 2, 3]])
    torch.testing.assert_close(_bag_mean(bag, codes), bag(codes), rtol=1e-6, atol=1e-7)
