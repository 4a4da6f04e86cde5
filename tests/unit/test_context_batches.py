"""Event context in the batches and in the sequence models: every training window's and every evaluation
history's context codes against a brute-force construction from the raw log (hour, weekday and
gap computed with ``datetime`` and integer arithmetic, not with ``recsys.data.context``), the
refusals, and a planted hour-of-day signal that SASRec, GRU4Rec and BERT4Rec learn only with
context."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from recsys.data.batches import SeqBatch, UserBatch
from recsys.data.context import interaction_context
from recsys.data.datamodule import RecDataModule
from recsys.data.interactions import Interactions
from recsys.data.loaders import RowStore, SeqLoader
from recsys.errors import ConfigError
from recsys.models.base import build_model
from tests.conftest import compose_config

DAY, HOUR = 86400, 3600
SASREC = {
    "_target_": "recsys.models.sasrec.SASRec",
    "max_len": 4,
    "hidden_size": 16,
    "n_layers": 1,
    "n_heads": 1,
    "inner_size": 32,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}


def ref_codes(times: list[int]) -> list[tuple[int, int, int]]:
    """One user's events, in time order: (hour 1..24, ISO weekday, gap bucket) by definition."""
    out, prev = [], None
    for t in times:
        dt = datetime.fromtimestamp(t, tz=timezone.utc)
        if prev is None:
            gap = 1
        elif t - prev < 1:
            gap = 2
        else:  # 3 + floor(log2(gap)), capped at 32
            gap = min(3 + (int(t - prev).bit_length() - 1), 32)
        out.append((dt.hour + 1, dt.isoweekday(), gap))
        prev = t
    return out


def ref_histories(user, item, time) -> dict[int, list[tuple[int, tuple[int, int, int]]]]:
    """Each user's (item, codes) in time order, ties in log order."""
    out = {}
    for u in sorted(set(user.tolist())):
        idx = sorted(np.flatnonzero(user == u).tolist(), key=lambda k: (time[k], k))
        codes = ref_codes([int(time[k]) for k in idx])
        out[u] = [(int(item[k]), c) for k, c in zip(idx, codes, strict=True)]
    return out


def tiny_log(seed: int = 0) -> Interactions:
    """7 users (one with a single event, one with none after the first), events given out of
    order, with ties (the same second) and gaps from 0 s to weeks."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 3, 5, 7, 9, 12]
    user = np.repeat(np.arange(len(lengths)), lengths)
    steps = rng.choice([0, 1, 5, 600, 7 * HOUR, 3 * DAY, 20 * DAY], size=len(user))
    time = 1_600_000_000 + rng.integers(0, 30 * DAY, size=len(user)) + np.cumsum(steps)
    time[3] = time[4]  # a tie inside user 2's history
    item = rng.integers(0, 10, size=len(user))
    perm = rng.permutation(len(user))  # the log is not in time order
    df = pd.DataFrame({"user": user[perm], "item": item[perm], "time": time[perm]})
    return Interactions.from_frame(df)


def ref_windows(
    hist: list, max_len: int, windowing: str, stride: int | None
) -> list[tuple[tuple[int, tuple[int, int, int]], ...]]:
    """The inputs of a user's training windows by their definition: transitions ``j`` (input
    ``hist[j - 1]``, target ``hist[j]``); a window ends every ``stride`` transitions back from
    the newest until one reaches the first (``truncate``: the newest window alone)."""
    n_trans = len(hist) - 1
    stride = stride or max_len
    out, w = [], 0
    while n_trans >= 1:
        last = n_trans - w * stride
        first = max(1, last - max_len + 1)
        out.append(tuple(hist[j - 1] for j in range(first, last + 1)))
        if first == 1 or windowing == "truncate":
            break
        w += 1
    return out


@pytest.mark.parametrize(
    "windowing,stride,bucket", [("windows", None, 1), ("windows", 2, 4), ("truncate", None, 1)]
)
def test_seq_batch_context_is_each_input_events_context(windowing, stride, bucket):
    inter = tiny_log()
    max_len, pad = 3, inter.n_items
    hist = ref_histories(
        inter.user_ids[inter.user], inter.item_ids[inter.item], inter.time.astype(np.int64)
    )
    store = RowStore.from_log(inter, torch.device("cpu"), interaction_context(inter))
    loader = SeqLoader(store, max_len, pad, 2, 1, windowing, bucket, stride=stride)
    got: Counter = Counter()
    for b in loader:
        assert b.context is not None and b.context.dtype == torch.int64
        assert b.context.shape == (*b.input.shape, 3)
        real = b.input != pad
        assert (b.context[~real] == 0).all()  # padding has no context
        assert (b.context[real] > 0).all()
        for r in range(len(b)):
            u = int(inter.user_ids[int(b.user[r])])
            cols = torch.nonzero(real[r]).flatten().tolist()
            assert cols == list(range(b.input.shape[1] - len(cols), b.input.shape[1]))  # left pad
            row = tuple(
                (int(inter.item_ids[int(b.input[r, c])]), tuple(b.context[r, c].tolist()))
                for c in cols
            )
            got[(u, row)] += 1
    want = Counter(
        (u, w) for u, h in hist.items() for w in ref_windows(h, max_len, windowing, stride)
    )
    assert got == want
    assert sum(want.values()) == len(loader.user)


def test_loader_without_context_is_unchanged():
    """No context asked: the batches carry None and the same items as with context."""
    inter = tiny_log()
    dev = torch.device("cpu")
    plain = SeqLoader(RowStore.from_csr(inter.to_csr(), dev), 3, inter.n_items, 2, seed=1)
    ctx = SeqLoader(
        RowStore.from_log(inter, dev, interaction_context(inter)), 3, inter.n_items, 2, seed=1
    )
    for a, b in zip(plain, ctx, strict=True):
        assert a.context is None
        assert torch.equal(a.input, b.input) and torch.equal(a.target, b.target)
        assert torch.equal(a.user, b.user) and torch.equal(a.loss_scale, b.loss_scale)


def test_user_batch_context_follows_items_in_both_layouts():
    inter = tiny_log(3)
    store = RowStore.from_log(inter, torch.device("cpu"), interaction_context(inter))
    hist = ref_histories(
        inter.user_ids[inter.user], inter.item_ids[inter.item], inter.time.astype(np.int64)
    )
    rows_ext = inter.user_ids  # internal row -> external user
    for rows, contiguous in (
        (torch.arange(1, 6), True),
        (torch.tensor([6, 0, 4, 2]), False),
        (torch.arange(0, 7), False),
    ):
        b = store.users(rows, contiguous)
        assert b.context is not None and b.context.shape == (len(b.items), 3)
        for k, r in enumerate(rows.tolist()):
            lo, hi = int(b.offsets[k]), int(b.offsets[k + 1])
            pairs = [
                (int(inter.item_ids[int(i)]), tuple(c))
                for i, c in zip(b.items[lo:hi].tolist(), b.context[lo:hi].tolist(), strict=True)
            ]
            assert pairs == hist[int(rows_ext[r])]
        # padded_context sits where padded puts each item: the last max_len events, left-padded
        for max_len in (2, 5, 15):
            seq, ctx = b.padded(max_len, -1), b.padded_context(max_len)
            assert ctx.shape == (len(rows), max_len, 3)
            for k, r in enumerate(rows.tolist()):
                h = hist[int(rows_ext[r])][-max_len:]
                n = len(h)
                want_ctx = [(0, 0, 0)] * (max_len - n) + [c for _, c in h]
                want_seq = [-1] * (max_len - n) + [i for i, _ in h]
                assert [tuple(c) for c in ctx[k].tolist()] == want_ctx
                assert [
                    -1 if i < 0 else int(inter.item_ids[i]) for i in seq[k].tolist()
                ] == want_seq
    with pytest.raises(ValueError, match="carries no context"):
        UserBatch.from_lists([0], [[1, 2]]).padded_context(3)


# -- through the datamodule --------------------------------------------------------------------
def clock_log(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """30 users, 4..9 events each at distinct times (no ties, so the split is unambiguous)."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(4, 10, size=30)
    user = np.repeat(np.arange(30), lengths)
    item = np.concatenate([rng.permutation(40)[:n] for n in lengths])  # no repeated pair
    time = 1_500_000_000 + np.arange(len(user)) * 977 + rng.integers(0, 500, len(user)) * 10_000
    return pd.DataFrame({"user": user, "item": item, "time": time})


def position_log(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The same events with sequence positions (0, 1, 2, ... per user) for a time."""
    df = clock_log(cfg).sort_values(["user", "time"])
    return df.assign(time=df.groupby("user").cumcount())


def datamodule(source: str, tmp_path) -> RecDataModule:
    cfg = compose_config(
        "train",
        [
            "data=synthetic",
            f"data.source={__name__}.{source}",
            "data.cache=false",
            "data.item_features=null",
            "data.user_features=null",
            f"data.root={tmp_path}",
            "data.batch_size=8",
        ],
    )
    return RecDataModule(OmegaConf.to_container(cfg.data, resolve=True), seed=0, eval_batch_size=7)


def test_datamodule_serves_context_when_the_model_asks(tmp_path):
    dm = datamodule("clock_log", tmp_path)
    raw = clock_log({})
    hist = ref_histories(raw.user.to_numpy(), raw.item.to_numpy(), raw.time.to_numpy())
    model = build_model({**SASREC, "features": {"context": "all"}}, dm.n_users, dm.n_items)
    dm.configure_for(model)
    ids_u, ids_i = dm.data.train.user_ids, dm.data.train.item_ids
    for stage, held in (("val", 2), ("test", 1)):  # leave-one-out: history = all but the last 2/1
        seen = 0
        for batch in dm._eval_loader(stage):
            users = batch.users
            assert users.context is not None and users.context.dtype == torch.int64
            for k, r in enumerate(users.user.tolist()):
                lo, hi = int(users.offsets[k]), int(users.offsets[k + 1])
                pairs = [
                    (int(ids_i[i]), tuple(c))
                    for i, c in zip(
                        users.items[lo:hi].tolist(), users.context[lo:hi].tolist(), strict=True
                    )
                ]
                assert pairs == hist[int(ids_u[r])][:-held]
                seen += 1
        assert seen == 30
    n_windows = 0
    for b in dm.train_dataloader():
        assert b.context is not None and b.context.shape == (*b.input.shape, 3)
        assert ((b.context == 0).all(-1) == (b.input == dm.n_items)).all()
        n_windows += len(b)
    assert n_windows > 0
    # the model trains and scores on these batches
    assert torch.isfinite(model.loss(b))
    assert model.score(batch.users).shape == (len(batch.users), dm.n_items)

    plain = build_model(SASREC, dm.n_users, dm.n_items)
    dm.configure_for(plain)  # not asked: no context anywhere
    assert all(b.context is None for b in dm.train_dataloader())
    assert all(b.users.context is None for b in dm._eval_loader("test"))


def test_context_refused_without_a_clock(tmp_path):
    dm = datamodule("position_log", tmp_path)
    model = build_model({**SASREC, "features": {"context": "all"}}, dm.n_users, dm.n_items)
    with pytest.raises(ConfigError) as e:
        dm.configure_for(model)
    assert str(e.value) == "model.features.context: synthetic has no timestamps"
    dm.configure_for(build_model(SASREC, dm.n_users, dm.n_items))  # ids only: fine


@pytest.mark.parametrize(
    "model,context,message",
    [
        ("sasrec", ["hour", "minute"], "model.features.context: no field 'minute'"),
        ("sasrec", "hour", "model.features.context must be null, all or a non-empty list"),
        ("sasrec", [], "model.features.context must be null, all or a non-empty list"),
        ("bert4rec", ["day"], "model.features.context: no field 'day'"),
        ("gru4rec", "gap", "model.features.context must be null, all or a non-empty list"),
        ("mf", ["gap"], "model.features.context: this model has no event context input"),
    ],
)
def test_bad_context_settings_are_refused(model, context, message):
    cfg = OmegaConf.to_container(compose_config("train", [f"model={model}"]).model, resolve=True)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_model({**cfg, "features": {"context": context}}, 5, 9)


def test_context_fields_and_neutral_padding():
    """Fields in CONTEXT_FIELDS order, named in features_used; an all-padding context adds
    nothing: the same loss and scores as the id-only model from the same seed."""
    torch.manual_seed(0)
    ids = build_model(SASREC, 3, 10)
    torch.manual_seed(0)
    ctx = build_model({**SASREC, "features": {"context": ["gap", "hour"]}}, 3, 10)
    assert ids.features_used() == {"item": [], "user": [], "context": []}
    assert ctx.features_used() == {"item": [], "user": [], "context": ["hour", "gap"]}
    assert sorted(ctx.context_emb) == ["gap", "hour"] and not ids.uses_context()
    inp = torch.tensor([[10, 1, 2, 3], [4, 5, 6, 7]])
    zero = torch.zeros(2, 4, 3, dtype=torch.long)
    a = ids.loss(SeqBatch(torch.tensor([0, 1]), inp, inp.roll(-1, 1)))
    b = ctx.loss(SeqBatch(torch.tensor([0, 1]), inp, inp.roll(-1, 1), None, zero))
    assert torch.equal(a, b)
    users = UserBatch.from_lists([0, 1], [[1, 2], [3, 4, 5]])
    with_zero = UserBatch(
        users.user, users.items, users.offsets, torch.zeros(5, 3, dtype=torch.long)
    )
    assert torch.equal(ids.eval().score(users), ctx.eval().score(with_zero))
    with pytest.raises(ConfigError, match="uses event context"):
        ctx.score(users)  # a history without its events' context is refused, not guessed
    # a real context changes the states; every context table gets a gradient, padding rows none
    ctx.train()
    codes = torch.tensor([[[0, 0, 0], [3, 1, 4], [9, 2, 1], [24, 7, 32]]] * 2)
    ctx.loss(SeqBatch(torch.tensor([0, 1]), inp, inp.roll(-1, 1), None, codes)).backward()
    for emb in ctx.context_emb.values():
        assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
        assert (emb.weight.grad[0] == 0).all()


# -- a planted context signal ----------------------------------------------------------------
MORNING, EVENING = range(0, 10), range(10, 20)


def hour_log(n_users: int, n_events: int, seed: int) -> tuple[Interactions, np.ndarray]:
    """Each event happens on a random day, in the morning (6-11 h) or the evening (18-23 h) at
    random; the item that follows an event is drawn from the morning items (0-9) when that event
    was in the morning, else from the evening items (10-19): the next item depends on the hour
    of the event alone, which the items do not reveal. Returns the log and, per user, the group
    (0 morning, 1 evening) of the event before its last one."""
    rng = np.random.default_rng(seed)
    evening = rng.random((n_users, n_events)) < 0.5
    hour = np.where(evening, 18, 6) + rng.integers(0, 6, (n_users, n_events))
    days = np.cumsum(rng.integers(1, 3, (n_users, n_events)), axis=1)
    time = 1_600_041_600 + days * DAY + hour * HOUR + rng.integers(0, 3600, (n_users, n_events))
    item = rng.integers(0, 20, (n_users, n_events))  # the first event: any item
    nxt = np.where(evening[:, :-1], 10, 0) + rng.integers(0, 10, (n_users, n_events - 1))
    item[:, 1:] = nxt
    user = np.repeat(np.arange(n_users), n_events)
    df = pd.DataFrame({"user": user, "item": item.ravel(), "time": time.ravel()})
    return Interactions.from_frame(df), evening[:, -2].astype(int)


def train_and_hit(
    features: dict | None, seed: int = 0, cfg: Mapping[str, Any] = SASREC, epochs: int = 25
) -> float:
    """Share of held-out users whose top-1 item is in the group their last-but-one event's hour
    calls for, for the model of ``cfg`` (SASRec) trained on every user's events but the last."""
    torch.manual_seed(seed)
    inter, group = hour_log(300, 10, seed)
    last = np.r_[np.diff(inter.user) != 0, True]  # events are grouped by user, in time order
    train = inter.select(~last)
    model = build_model({**cfg, "max_len": 8, "features": features}, inter.n_users, 20)
    dev = torch.device("cpu")
    ctx = interaction_context(train) if model.uses_context() else None
    loader = SeqLoader(RowStore.from_log(train, dev, ctx), 8, 20, 64, seed, bucket=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for b in loader:
            opt.zero_grad()
            model.loss(b).backward()
            opt.step()
    model.eval()
    store = RowStore.from_log(train, dev, ctx)
    with torch.no_grad():
        top = model.score(store.users(torch.arange(inter.n_users), contiguous=True)).argmax(1)
    want_evening = torch.as_tensor(group, dtype=torch.bool)
    return float(((top >= 10) == want_evening).float().mean())


def test_sasrec_learns_a_planted_hour_signal_only_with_context():
    with_context = train_and_hit({"context": "all"})
    with_hour = train_and_hit({"context": ["hour"]})
    ids_only = train_and_hit(None)
    assert with_context >= 0.9 and with_hour >= 0.9, (with_context, with_hour)
    assert ids_only <= 0.65, ids_only  # the items carry no hint: chance is 0.5


# -- GRU4Rec and BERT4Rec take the same context ----------------------------------------------
GRU4REC = {
    "_target_": "recsys.models.gru4rec.GRU4Rec",
    "max_len": 4,
    "embedding_size": 16,
    "hidden_size": 16,
    "dropout": 0.0,
}
BERT4REC = {**SASREC, "_target_": "recsys.models.bert4rec.BERT4Rec"}
SEQ_MODELS = {"gru4rec": GRU4REC, "bert4rec": BERT4REC}


@pytest.mark.parametrize("name", sorted(SEQ_MODELS))
def test_context_neutral_padding_gru4rec_bert4rec(name):
    """As for SASRec: an all-padding context is the id-only model (same seed, same loss and
    scores), a history without context is refused, every context table gets a gradient."""
    cfg = SEQ_MODELS[name]
    torch.manual_seed(0)
    ids = build_model(cfg, 3, 10)
    torch.manual_seed(0)
    ctx = build_model({**cfg, "features": {"context": ["gap", "hour"]}}, 3, 10)
    assert ctx.features_used()["context"] == ["hour", "gap"] and ctx.uses_context()
    assert not ids.uses_context()
    inp = torch.tensor([[10, 1, 2, 3], [10, 10, 5, 6]])
    tgt = torch.tensor([[10, 2, 3, 4], [10, 10, 6, 7]])
    zero = torch.zeros(2, 4, 3, dtype=torch.long)
    torch.manual_seed(1)  # BERT4Rec's masks: the same draws for both
    a = ids.loss(SeqBatch(torch.tensor([0, 1]), inp, tgt))
    torch.manual_seed(1)
    b = ctx.loss(SeqBatch(torch.tensor([0, 1]), inp, tgt, None, zero))
    assert torch.equal(a, b)
    users = UserBatch.from_lists([0, 1], [[1, 2], [3, 4, 5, 6, 7]])
    with_zero = UserBatch(
        users.user, users.items, users.offsets, torch.zeros(7, 3, dtype=torch.long)
    )
    assert torch.equal(ids.eval().score(users), ctx.eval().score(with_zero))
    with pytest.raises(ConfigError, match=f"this {ctx.__class__.__name__} uses event context"):
        ctx.score(users)
    with pytest.raises(ConfigError, match="uses event context"):
        ctx.loss(SeqBatch(torch.tensor([0, 1]), inp, tgt))
    ctx.train()
    codes = torch.tensor([[[0, 0, 0], [3, 1, 4], [9, 2, 1], [24, 7, 32]]] * 2)
    codes[1, :2] = 0  # padding
    ctx.loss(SeqBatch(torch.tensor([0, 1]), inp, tgt, None, codes)).backward()
    for emb in ctx.context_emb.values():
        assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
        assert (emb.weight.grad[0] == 0).all()


@pytest.mark.parametrize("name", sorted(SEQ_MODELS))
def test_context_follows_its_items_through_any_padding(name):
    """A user's score does not depend on the other users of its batch (how much left padding its
    row has, hence GRU4Rec's re-alignment to right padding), and does depend on its context."""
    torch.manual_seed(0)
    model = build_model({**SEQ_MODELS[name], "max_len": 6, "features": {"context": "all"}}, 4, 10)
    model.eval()
    hists = [[1], [2, 3, 4, 5, 6, 7, 8], [9, 0, 3], [4, 4]]
    g = torch.Generator().manual_seed(3)
    codes = [
        torch.stack(
            [
                torch.randint(1, 25, (len(h),), generator=g),
                torch.randint(1, 8, (len(h),), generator=g),
                torch.randint(1, 33, (len(h),), generator=g),
            ],
            1,
        )
        for h in hists
    ]

    def batch(rows: list[int], ctx: list[Tensor]) -> UserBatch:
        b = UserBatch.from_lists(rows, [hists[r] for r in rows])
        return UserBatch(b.user, b.items, b.offsets, torch.cat([ctx[r] for r in rows]))

    with torch.no_grad():
        together = model.score(batch([0, 1, 2, 3], codes))
        for r in range(4):
            alone = model.score(batch([r], codes))[0]
            torch.testing.assert_close(together[r], alone, rtol=1e-5, atol=1e-6)
        moved = [c.roll(1, 0) for c in codes]  # the same codes on other events
        assert not torch.allclose(model.score(batch([1], moved)), together[1:2])


def test_bert4rec_trains_each_target_with_its_events_context():
    """BERT4Rec's sequence is the windows' targets: each target event's own context codes (the
    next input's), 0 for the newest target (its codes are not in the batch: as the mask at
    scoring) and at padding; against the raw log's events."""
    inter = tiny_log(1)
    max_len, pad = 4, inter.n_items
    hist = ref_histories(
        inter.user_ids[inter.user], inter.item_ids[inter.item], inter.time.astype(np.int64)
    )
    model = build_model({**BERT4REC, "features": {"context": "all"}}, inter.n_users, pad)
    store = RowStore.from_log(inter, torch.device("cpu"), interaction_context(inter))
    n = 0
    for b in SeqLoader(store, max_len, pad, 3, 0, "windows", 1, stride=2):
        ctx = model.target_context(b)
        assert ctx is not None and ctx.shape == b.context.shape
        assert (ctx[:, -1] == 0).all() and (ctx[b.target == pad] == 0).all()
        for r in range(len(b)):
            events = hist[int(inter.user_ids[int(b.user[r])])]
            for j in range(b.target.shape[1] - 1):
                if int(b.target[r, j]) == pad:
                    continue
                item, codes = int(inter.item_ids[int(b.target[r, j])]), tuple(ctx[r, j].tolist())
                assert (item, codes) in events  # the target's own event
                n += 1
    assert n > 0


@pytest.mark.parametrize("name,epochs", [("gru4rec", 25), ("bert4rec", 40)])
def test_gru4rec_bert4rec_learn_a_planted_hour_signal_only_with_context(name, epochs):
    cfg = {**SEQ_MODELS[name], "max_len": 8}
    with_context = train_and_hit({"context": "all"}, cfg=cfg, epochs=epochs)
    with_hour = train_and_hit({"context": ["hour"]}, cfg=cfg, epochs=epochs)
    ids_only = train_and_hit(None, cfg=cfg, epochs=epochs)
    assert with_context >= 0.9 and with_hour >= 0.9, (with_context, with_hour)
    assert ids_only <= 0.65, ids_only  # the items carry no hint: chance is 0.5
