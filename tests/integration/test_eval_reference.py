"""The production evaluation path against a brute force written here from the split's events.

``evaluate(module, dm, stage)`` runs a RecModule through a Lightning trainer on the
datamodule's evaluation loader: the users with held-out items, in id order and in chunks of
``eval.batch_size``; as the model's input each user's history (training events, plus validation
events at test time) in time order; that history masked out of the ranking when
``eval.mask_seen`` is on; the stage's held-out items as targets. Here each piece is rebuilt from
the split's event arrays alone (``user``, ``item``, ``time``): histories by a plain sort on time,
the model's scores for all evaluated users in one call, the mask, the ranking and every metric
from its definition in numpy (never ``recsys.metrics``).

Models: MF (pair model) and SASRec (sequence model: its scores depend on the order of the
history, cut to the ``max_len`` most recent items), untrained with the run's seed. Splits: random
(held-out events interleaved in time with training ones, so the test history is a merge of two
logs) and temporal (users without targets, users with more than K targets, users with no
history). Both with ``mask_seen`` on and off, both stages.

Ties: one user's float32 scores from differently composed batches differ by ~1e-7 (SASRec trims
each batch to its longest history; BLAS blocks differ), and ``torch.topk``'s order among equal
scores is unspecified (an untrained or trained SASRec scores every item 0 for a user with no
history). So where a user's top K + 1 reference scores are more than ``TOL`` apart the
production list must equal the reference's; elsewhere it must be a valid ranking of the
reference scores up to ``TOL`` (no masked item, descending, nothing outside it scored higher),
and the reference metrics use it.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from recsys.data.batches import UserBatch
from recsys.training.module import RecModule
from recsys.training.runs import datamodule_from_config, evaluate, module_for
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

TOPK = [10, 20]
METRICS = ["recall", "precision", "ndcg", "map", "mrr", "hit", "recall_capped"]
EVAL_BATCH = 7  # users per chunk: many chunks, the last one short
TOL = 1e-6  # scores are ~0.06; batch composition moves them by ~1e-7

MODELS = {
    "mf": ["model=mf"],
    "sasrec": [
        "model=sasrec",
        "model.hidden_size=16",
        "model.inner_size=32",
        "model.n_layers=1",
        "model.max_len=12",  # shorter than many histories: the most recent items are kept
    ],
}
SPLITS = {
    "random": ["data.split=random", "data.val_ratio=0.15", "data.test_ratio=0.15"],
    "temporal": ["data.split=temporal", "data.val_ratio=0.15", "data.test_ratio=0.15"],
}


def build(model: str, split: str, tmp_path) -> tuple:
    """The composed run config and its datamodule, as ``recsys-train`` builds them."""
    overrides = (
        TINY_DATA
        + FAST_TRAINER
        + MODELS[model]
        + SPLITS[split]
        + [
            "data.cache=false",
            f"eval.batch_size={EVAL_BATCH}",
            f"eval.topk=[{','.join(map(str, TOPK))}]",
            f"eval.metrics=[{','.join(METRICS)}]",
        ]
    )
    config = OmegaConf.to_container(compose_config("train", overrides, tmp_path), resolve=True)
    pl.seed_everything(config["seed"], verbose=False)
    dm = datamodule_from_config(config)
    dm.setup()
    return config, dm


def make_module(config: dict, dm, mask_seen: bool) -> RecModule:
    """The run's module (``eval.mask_seen`` set as given), seeded as ``recsys-train`` seeds it."""
    pl.seed_everything(config["seed"], verbose=False)
    return module_for({**config, "eval": {**config["eval"], "mask_seen": mask_seen}}, dm)


def run_production(module: RecModule, dm, stage: str) -> tuple:
    """``evaluate``'s means and per-user values, and each chunk's batch and raw result."""
    chunks: list = []
    evaluate_batch = module.evaluate_batch

    def spy(batch):
        out = evaluate_batch(batch)
        chunks.append((batch, {k: v.detach().cpu() for k, v in out.items()}))
        return out

    module.evaluate_batch = spy
    try:
        means, per_user = evaluate(module, dm, stage, accelerator="cpu")
    finally:
        del module.evaluate_batch
    return means, per_user, chunks


# -- the brute force ---------------------------------------------------------------------------
def histories(parts: list, n_users: int) -> list[list[int]]:
    """Each user's items, oldest first: all events of ``parts`` sorted by time (equal times keep
    the order of the parts, then of the log)."""
    events = sorted(
        (t, k, j, u, i)
        for k, part in enumerate(parts)
        for j, (u, i, t) in enumerate(
            zip(part.user.tolist(), part.item.tolist(), part.time.tolist(), strict=True)
        )
    )
    out: list[list[int]] = [[] for _ in range(n_users)]
    for *_, u, i in events:
        out[u].append(i)
    return out


def relevant(part, n_users: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n_users)]
    for u, i in zip(part.user.tolist(), part.item.tolist(), strict=True):
        out[u].add(i)
    return out


def scores_of(model, users: list[int], hist: list[list[int]]) -> np.ndarray:
    """(U, I) the model's raw scores, all users in one batch."""
    model.eval()
    with torch.no_grad():
        s = model.score(UserBatch.from_lists(users, [hist[u] for u in users]))
    return s.double().cpu().numpy()


def resolve_top(scores: np.ndarray, prod_top: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The reference top ``k`` of each row (descending score, lower id first on equal scores).

    Rows whose top ``k + 1`` scores are separated by more than ``TOL`` have one right answer:
    the production list must be it. Others (near or exact ties) keep the production list where
    it ranks the reference scores validly up to ``TOL``. Returns the lists and how many rows
    had one right answer."""
    order = np.argsort(-scores, axis=1, kind="stable")
    top = order[:, :k].copy()
    head = np.take_along_axis(scores, order[:, : k + 1], axis=1)
    unambiguous = (-np.diff(head, axis=1) > TOL).all(1)
    for r in range(len(scores)):
        p = prod_top[r, :k]
        if unambiguous[r]:
            assert np.array_equal(top[r], p), f"row {r}: {p} ranked, expected {top[r]}"
            continue
        s = scores[r]
        assert len(set(p.tolist())) == k, (r, p)
        assert np.isfinite(s[p]).all(), f"row {r}: a masked item was ranked: {p}"
        assert (np.diff(s[p]) <= TOL).all(), f"row {r}: not in descending order: {s[p]}"
        outside = np.delete(s, p)
        assert s[p].min() >= outside.max() - TOL, f"row {r}: an item outside scores higher"
        top[r] = p
    return top, int(unambiguous.sum())


def gini(counts: np.ndarray) -> float:
    """Mean absolute difference over all pairs, over twice the mean."""
    c = counts.astype(np.float64)
    if c.sum() == 0:
        return 0.0
    return float(np.abs(c[:, None] - c[None, :]).sum() / (2 * len(c) * c.sum()))


def reference_metrics(
    top: np.ndarray, rel: list[set[int]], train_counts: np.ndarray, n_items: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-user values and stage means of every metric, from the definitions."""
    per_user: dict[str, list[float]] = {}
    for k in TOPK:
        disc = 1.0 / np.log2(np.arange(1, k + 1) + 1.0)  # rank i (1-based): 1 / log2(i + 1)
        for row, r in zip(top, rel, strict=True):
            h = np.array([int(i) in r for i in row[:k]], dtype=np.float64)
            n_hits, n_rel, ideal = h.sum(), len(r), min(k, len(r))
            first = np.flatnonzero(h)
            values = {
                "hit": float(n_hits > 0),
                "precision": n_hits / k,
                "recall": n_hits / n_rel,
                "recall_capped": n_hits / ideal,
                "ndcg": float((h * disc).sum() / disc[:ideal].sum()),
                "mrr": 1.0 / (first[0] + 1) if len(first) else 0.0,
                # mean over the hits of the precision at their rank, over min(K, |R|)
                "map": float((h * np.cumsum(h) / np.arange(1, k + 1)).sum() / ideal),
            }
            for m in METRICS:
                per_user.setdefault(f"{m}@{k}", []).append(values[m])
            per_user.setdefault(f"arp@{k}", []).append(float(train_counts[row[:k]].mean()))
    arrays = {key: np.asarray(v) for key, v in per_user.items()}
    means = {key: float(v.mean()) for key, v in arrays.items()}
    for k in TOPK:
        listed = np.bincount(top[:, :k].ravel(), minlength=n_items)
        means[f"coverage@{k}"] = float((listed > 0).sum() / n_items)
        means[f"gini@{k}"] = gini(listed)
    return arrays, means


# -- the test ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("model", list(MODELS))
def test_production_evaluation_matches_numpy_brute_force(model, split, tmp_path):
    kmax = max(TOPK)
    config, dm = build(model, split, tmp_path)
    assert config["eval"]["mask_seen"] is True  # the default
    d = dm.data
    train_counts = np.bincount(d.train.item, minlength=d.n_items)
    means_by: dict[tuple[bool, str], dict[str, float]] = {}
    weights = None
    for mask_seen in (True, False):
        module = make_module(config, dm, mask_seen)
        state = module.state_dict()
        if weights is None:
            weights = state
        else:  # same seed, same weights: what differs between the two passes is the mask
            assert all(torch.equal(weights[k], state[k]) for k in weights)
        for stage in ("val", "test"):
            hist = histories([d.train] if stage == "val" else [d.train, d.val], d.n_users)
            rel = relevant(d.val if stage == "val" else d.test, d.n_users)
            users = [u for u in range(d.n_users) if rel[u]]
            means, per_user, chunks = run_production(module, dm, stage)

            # the loader: users with targets in id order, in chunks, each with its history (time
            # order) as model input and its held-out items as targets
            assert len(chunks) == -(-len(users) // EVAL_BATCH) > 1
            assert all(len(b.users.user) <= EVAL_BATCH for b, _ in chunks)
            assert np.concatenate([b.users.user.numpy() for b, _ in chunks]).tolist() == users
            for b, _ in chunks:
                items, offsets = b.users.items.tolist(), b.users.offsets.tolist()
                t_rows, t_items = b.target_rows.tolist(), b.target_items.tolist()
                for r, u in enumerate(b.users.user.tolist()):
                    assert items[offsets[r] : offsets[r + 1]] == hist[u], (stage, u)
                    assert {i for rr, i in zip(t_rows, t_items, strict=True) if rr == r} == rel[u]
                    assert int(b.n_rel[r]) == len(rel[u])

            scores = scores_of(module.model, users, hist)
            if mask_seen:
                for r, u in enumerate(users):
                    scores[r, hist[u]] = -np.inf
            assert (np.isfinite(scores).sum(1) > kmax).all()  # K unmasked items for everyone
            prod_top = np.concatenate([out["_top"].numpy() for _, out in chunks])
            top, unambiguous = resolve_top(scores, prod_top, kmax)
            assert unambiguous >= 15, unambiguous  # most lists have one right answer

            shown = [bool(np.isin(top[r, :10], hist[u]).any()) for r, u in enumerate(users)]
            if mask_seen:
                assert not any(shown)
            else:  # unmasked, history items do reach the top 10: the mask has work to do
                assert any(shown)

            ref_per_user, ref_means = reference_metrics(
                top, [rel[u] for u in users], train_counts, d.n_items
            )
            assert set(means) == set(ref_means)
            for key, value in ref_means.items():
                assert means[key] == pytest.approx(value, abs=1e-6), (stage, key)
            assert per_user["user"].tolist() == users
            assert set(per_user) == {"user", *ref_per_user}
            for key, value in ref_per_user.items():
                np.testing.assert_allclose(per_user[key], value, rtol=0, atol=1e-6, err_msg=key)
            means_by[(mask_seen, stage)] = means

        if module.model.train_batch == "sequences":
            # the order and the cut of the history matter to this model, so the checks above pin
            # them: some histories are longer than its window, and reversed histories score
            # differently
            users = [u for u in range(d.n_users) if len(hist[u]) >= 2]
            assert any(len(hist[u]) > module.model.max_len for u in users)
            as_is = scores_of(module.model, users, hist)
            flipped = scores_of(module.model, users, [h[::-1] for h in hist])
            assert np.abs(as_is - flipped).max() > 1e-3

    for stage in ("val", "test"):
        on, off = means_by[(True, stage)], means_by[(False, stage)]
        assert on["ndcg@10"] != pytest.approx(off["ndcg@10"], abs=1e-6), stage
