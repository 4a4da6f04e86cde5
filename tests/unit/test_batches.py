"""Batch shapes and loaders: dense/padded views, negative sampling, per-epoch determinism."""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.batches import UserBatch
from recsys.data.interactions import Interactions
from recsys.data.loaders import EvalLoader, PairLoader, RowStore, sample_negatives
from recsys.data.synthetic import generate


def test_dense_and_padded_views():
    b = UserBatch.from_lists([0, 1, 2], [[3, 1], [], [0, 1, 2, 4]])
    dense = b.dense(5)
    assert dense.tolist() == [[0, 1, 0, 1, 0], [0] * 5, [1, 1, 1, 0, 1]]
    pad = 9
    assert b.padded(3, pad).tolist() == [[pad, 3, 1], [pad, pad, pad], [1, 2, 4]]


def test_row_store_gathers_rows_in_order():
    inter = Interactions.from_frame(
        __import__("pandas").DataFrame(
            {"user": [1, 1, 2, 3, 3, 3], "item": [5, 6, 5, 7, 6, 5], "time": [2, 1, 0, 0, 1, 2]}
        )
    )
    csr = inter.to_csr()
    store = RowStore(torch.as_tensor(csr.indptr), torch.as_tensor(csr.indices))
    items, offsets = store.gather(torch.tensor([2, 0]))
    ext = inter.item_ids[items.numpy()]
    assert ext.tolist() == [7, 6, 5, 6, 5]  # user 3 then user 1, each oldest first
    assert offsets.tolist() == [0, 3, 5]


def test_negatives_are_never_training_positives():
    df, _ = generate(n_users=100, n_items=40, n_groups=2, mean_length=15, seed=0)
    inter = Interactions.from_frame(df)
    user, item = torch.as_tensor(inter.user), torch.as_tensor(inter.item)
    keys = torch.sort(user * inter.n_items + item).values
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(user, inter.n_items, 5, keys, g)
    positives = set(zip(inter.user.tolist(), inter.item.tolist(), strict=True))
    assert neg.shape == (len(user), 5)
    assert not any(
        (u, n) in positives
        for u, row in zip(inter.user.tolist(), neg.tolist(), strict=True)
        for n in row
    )


def test_pair_loader_epochs_are_reproducible_and_distinct():
    user = torch.arange(50).repeat(4)
    item = torch.arange(200) % 37
    loader = PairLoader(user, item, None, 37, 1, batch_size=64, seed=3)

    def epoch(e):
        loader.sampler.set_epoch(e)
        return [torch.cat([b.user, b.item, b.neg.flatten()]) for b in loader]

    a, b, c = epoch(2), epoch(2), epoch(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert sum(len(x) for x in a) == 200 * 3 and len(a) == len(loader) == 4


def test_eval_loader_covers_each_user_with_targets_once():
    hist = RowStore(torch.tensor([0, 2, 2, 3]), torch.tensor([0, 1, 2]))
    targets = RowStore(torch.tensor([0, 1, 1, 3]), torch.tensor([4, 0, 3]))
    shards = [list(EvalLoader(hist, targets, 1, rank=r, world_size=2)) for r in range(2)]
    users = sorted(int(b.users.user[0]) for shard in shards for b in shard)
    assert users == [0, 2]  # user 1 has no target
    b = next(b for s in shards for b in s if int(b.users.user[0]) == 2)
    assert b.users.items.tolist() == [2] and b.target_items.tolist() == [0, 3]
    assert np.array_equal(b.target_rows.numpy(), [0, 0])


def test_eval_batches_count_each_users_distinct_targets_once():
    """``n_rel`` is the size of the relevant set: a target repeated in the log (``dedup=false``)
    counts once, as in the dense target matrix it is compared with."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 6, size=int(n)).tolist() for n in rng.integers(0, 5, size=40)]
    indptr = torch.tensor([0, *np.cumsum([len(r) for r in rows])])
    targets = RowStore(indptr, torch.tensor([i for r in rows for i in r], dtype=torch.long))
    hist = RowStore(torch.zeros(41, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert targets.distinct_counts().tolist() == [len(set(r)) for r in rows]
    got = {}
    for b in EvalLoader(hist, targets, 7):
        dense = torch.zeros(len(b.users), 6, dtype=torch.bool)
        dense[b.target_rows, b.target_items] = True
        assert torch.equal(b.n_rel, dense.sum(1))
        got.update(zip(b.users.user.tolist(), b.n_rel.tolist(), strict=True))
    assert got == {u: len(set(r)) for u, r in enumerate(rows) if r}
    # one target per user (leave-one-out): the row lengths themselves
    one = RowStore(torch.tensor([0, 1, 1, 2]), torch.tensor([5, 5]))
    assert one.distinct_counts().tolist() == [1, 0, 1]


def test_eval_batches_sliced_or_gathered_hold_the_same_rows():
    """Chunks of consecutive users are sliced out of the stores, others gathered: both give each
    user's history, targets and ratings exactly (against a per-user reference)."""
    rng = np.random.default_rng(1)
    n = 50
    hist_rows = [rng.integers(0, 9, size=int(k)).tolist() for k in rng.integers(0, 6, size=n)]
    tgt_rows = [rng.integers(0, 9, size=int(k)).tolist() for k in rng.integers(0, 3, size=n)]
    tgt_rows[10:20] = [[1]] * 10  # a run of users with targets: contiguous chunks
    store = _store_of(hist_rows)
    targets = _store_of(tgt_rows)
    ratings = RowStore(targets.indptr, targets.indices.float() / 2)
    for bs in (1, 4, 7, 64):
        seen = []
        for b in EvalLoader(store, targets, bs, target_ratings=ratings):
            for j, u in enumerate(b.users.user.tolist()):
                lo, hi = int(b.users.offsets[j]), int(b.users.offsets[j + 1])
                assert b.users.items[lo:hi].tolist() == hist_rows[u]
                mine = (b.target_rows == j).nonzero().flatten()
                assert b.target_items[mine].tolist() == tgt_rows[u]
                assert (b.target_ratings[mine] * 2).long().tolist() == tgt_rows[u]
                seen.append(u)
        assert seen == [u for u in range(n) if tgt_rows[u]]


def _store_of(rows: list[list[int]]) -> RowStore:
    indptr = torch.tensor([0, *np.cumsum([len(r) for r in rows])], dtype=torch.long)
    return RowStore(indptr, torch.tensor([i for r in rows for i in r], dtype=torch.long))
