"""``recsys-segment``: group the users of a trained run into customer segments.

    recsys-segment run=outputs/<date>/<time>                       # k by silhouette, both features
    recsys-segment run=outputs/<date>/<time> features=rfm k=5
    recsys-segment artifact=outputs/<date>/<time>/artifact features=embedding

Features (``features=rfm|embedding|both``), per user, from the history known at test time
(training + validation events, the model's evaluation input):

- ``rfm``: recency (days since the user's last event, relative to the last event of the log;
  only for logs with a clock shared by all users; counted in events of the log when the clock is
  the row order, ``data.rows_in_time_order``), frequency (log of the number of events) and
  monetary value (mean rating, where the log has ratings). What a log lacks is said on the
  console and in ``segments.json`` (``rfm_notes``): on the one-line-per-user Amazon files RFM
  is frequency only;
- ``embedding``: the model's ``user_representation(users)`` (MF/NCF user embeddings, the
  autoencoders' latent code, the sequence models' final hidden state over the history); a
  model without one is refused with its name;
- ``both``: the two blocks side by side, each scaled to unit mean squared norm so neither
  dominates by dimension.

Columns are standardized, then k-means (scikit-learn, ``n_init`` restarts, seeded: the same
command gives the same segments). ``k`` is given, or chosen by the silhouette score over
``k_range`` (on a seeded sample of at most ``silhouette_sample`` users).

Writes to ``out`` (default ``<run>/segments``): ``segments.csv`` (``user`` = external id,
``segment``), ``segments.json`` (per segment: size, activity and recency quantiles, mean
rating, top items by lift over global popularity, and mean per-user test metrics from the run's
``per_user_test.npz``), and ``segments.png`` (2-D PCA projection coloured by segment; size and
NDCG@10 per segment; not with ``plot=false`` or without matplotlib, and then an earlier
segmentation's picture is removed). Each file is written atomically; the result's ``written``
lists exactly the files this call wrote. Users removed by ``data.exclude_users`` are in no output: they are not in
the run's data.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.data.interactions import Interactions, event_index, has_clock
from recsys.errors import CheckpointError, ConfigError
from recsys.files import atomic_write, write_json
from recsys.models.base import Recommender
from recsys.trust import Trust, check

log = logging.getLogger("recsys")
DAY = 86_400.0
FEATURES = ("rfm", "embedding", "both")


# -- inputs -------------------------------------------------------------------------------------
def rfm_notes(inter: Interactions, name: str, event_clock: bool = False) -> list[str]:
    """What RFM cannot compute on this log, one sentence each (empty when R, F and M all exist)."""
    notes = []
    if inter.time is None:
        notes.append(f"no recency: dataset {name!r} has no time column")
    elif not has_clock(inter):
        notes.append(
            f"no recency: dataset {name!r} orders events only by each user's own sequence "
            "position, there is no clock shared by all users to measure recency on"
        )
    elif event_clock:
        notes.append(
            "recency in events, not days: the clock is the row order (data.rows_in_time_order)"
        )
    if inter.rating is None:
        notes.append(f"no monetary value: dataset {name!r} has no rating or value column")
    return notes


def rfm_features(
    inter: Interactions, now: float | None = None, event_clock: bool = False
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """(U, f) RFM features of every user of ``inter``'s id space, their names, and the raw values.

    Users without events get frequency 0 and the largest recency. ``event_clock``: ``time`` is
    an event index (``data.rows_in_time_order``), so recency counts the events of the log after
    the user's last one instead of days.
    """
    n = inter.n_users
    count = np.bincount(inter.user, minlength=n).astype(np.float64)
    cols, names, raw = [np.log1p(count)], ["log_frequency"], {"frequency": count}
    if has_clock(inter) and event_clock:
        last = np.full(n, -1.0)
        np.maximum.at(last, inter.user, event_index(inter).astype(np.float64))
        recency = np.where(last >= 0, len(inter) - 1 - last, len(inter))
        cols.append(np.log1p(recency))
        names.append("log_recency_events")
        raw["recency_events"] = recency
    elif has_clock(inter):
        last = np.full(n, -np.inf)
        np.maximum.at(last, inter.user, inter.time)
        ref = float(inter.time.max()) if now is None else float(now)
        recency = np.where(np.isfinite(last), (ref - last) / DAY, np.nan)
        recency = np.where(
            np.isnan(recency), np.nanmax(recency) if np.isfinite(recency).any() else 0.0, recency
        )
        cols.append(np.log1p(np.maximum(recency, 0.0)))
        names.append("log_recency_days")
        raw["recency_days"] = recency
    if inter.rating is not None:
        total = np.bincount(inter.user, weights=inter.rating.astype(np.float64), minlength=n)
        mean = np.divide(total, count, out=np.full(n, np.nan), where=count > 0)
        mean = np.where(np.isnan(mean), np.nanmean(mean), mean)
        cols.append(mean)
        names.append("mean_rating")
        raw["mean_rating"] = mean
    return np.stack(cols, 1), names, raw


def representation(model: Recommender, history: Interactions, batch_size: int = 1024) -> np.ndarray:
    """(U, d) ``model.user_representation`` of every user, fed their ``history``."""
    if not model.represents_users:
        raise ConfigError(
            f"features=embedding: {type(model).__name__} has no user_representation(users); "
            "use features=rfm, or a model that has one (MF, BiasedMF, GMF/MLP/NeuMF, "
            "Mult-VAE/DAE, SASRec/BERT4Rec/GRU4Rec)"
        )
    from recsys.data.batches import UserBatch

    csr = history.to_csr()
    out = []
    model.eval()
    with torch.no_grad():
        for s in range(0, history.n_users, batch_size):
            users = list(range(s, min(s + batch_size, history.n_users)))
            b = UserBatch.from_lists(users, [csr.row(u).tolist() for u in users])
            out.append(model.user_representation(b).float().cpu().numpy())
    return np.concatenate(out)


def _standardize(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def _unit_block(x: np.ndarray) -> np.ndarray:
    """Standardized columns scaled so a row has unit mean squared norm."""
    z = _standardize(x)
    return z / np.sqrt(max(z.shape[1], 1))


# -- clustering ---------------------------------------------------------------------------------
def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # one thread: small fits, and OpenMP oversubscription on shared cores costs far more
    with threadpool_limits(limits=1):
        return (
            KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x).astype(np.int64)
        )


def choose_k(
    x: np.ndarray, ks: list[int], seed: int, sample: int = 5000, n_init: int = 10
) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette score (on a seeded sample of rows), and every k's score."""
    from sklearn.metrics import silhouette_score

    scores: dict[int, float] = {}
    for k in ks:
        if not 2 <= k < len(x):
            continue
        labels = kmeans(x, k, seed, n_init)
        scores[k] = float(
            silhouette_score(x, labels, sample_size=min(sample, len(x)), random_state=seed)
        )
    if not scores:
        raise ConfigError(f"k_range {ks} has no k with 2 <= k < {len(x)} users")
    return max(scores, key=lambda k: (scores[k], -k)), scores


def top_items_by_lift(
    inter: Interactions, labels: np.ndarray, seg: int, n: int = 10, min_count: int = 5
) -> list[dict[str, Any]]:
    """Items over-represented in segment ``seg``: share of the segment's events / global share."""
    in_seg = labels[inter.user] == seg
    seg_counts = np.bincount(inter.item[in_seg], minlength=inter.n_items).astype(np.float64)
    all_counts = np.bincount(inter.item, minlength=inter.n_items).astype(np.float64)
    if seg_counts.sum() == 0:
        return []
    lift = (seg_counts / seg_counts.sum()) / np.maximum(all_counts / all_counts.sum(), 1e-300)
    support = max(min_count, int(np.ceil(0.001 * seg_counts.sum())))
    cand = np.flatnonzero(seg_counts >= support)
    cand = cand[np.lexsort((cand, -lift[cand]))][:n]
    return [
        {
            "item": _plain(inter.item_ids[i]),
            "lift": round(float(lift[i]), 3),
            "count": int(seg_counts[i]),
        }
        for i in cand
    ]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _quantiles(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    return {f"q{q}": float(np.quantile(x, q / 100)) for q in (10, 25, 50, 75, 90)}


# -- run ----------------------------------------------------------------------------------------
def _load(
    run: str | None,
    artifact: str | None,
    data_root: str | None,
    trust: list[str] | None = None,
    allow_unfinished: bool = False,
):
    """(model, data config, prepared split, run dir or None, artifact dir or None) of a run or
    an artifact. What its files may name for construction: recsys' own classes and ``trust``
    (:mod:`recsys.trust`)."""
    from recsys.data.pipeline import prepare
    from recsys.training.runs import open_run

    if bool(run) == bool(artifact):
        raise ConfigError(
            "give exactly one of run=<run directory> or artifact=<artifact directory>"
        )
    if run:
        run_dir = Path(str(run))
        if not run_dir.is_dir():
            raise CheckpointError(
                f"run={run_dir}: no checkpoints/best.ckpt (is it a recsys-train run directory?)"
            )
        opened = open_run(
            run_dir, data_root=data_root, key="run", trust=trust, allow_unfinished=allow_unfinished
        )
        data_cfg = opened.config["data"]
        return opened.module.model, data_cfg, opened.datamodule.data, run_dir, None
    from recsys.serving.artifact import load

    rec = load(str(artifact), backend="eager", trust=trust)
    import yaml

    config = yaml.safe_load((Path(str(artifact)) / "config.yaml").read_text())
    model = rec.model
    if rec.meta.get("pseudonymized_users"):
        raise ConfigError(
            f"artifact={artifact}: its user ids are pseudonymized; segment the run instead (run=...)"
        )
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise CheckpointError(f"{artifact}/config.yaml: no data config")
    data_cfg = dict(config["data"])
    allowed = Trust.for_file(Path(str(artifact)) / "config.yaml", trust)
    check(data_cfg.get("source"), "source", "data.source", allowed)
    if data_root is not None:
        data_cfg["root"] = data_root
    split = prepare(data_cfg, int(config.get("seed", 0)))
    if (split.n_users, split.n_items) != (model.num_users, model.num_items):
        raise CheckpointError(
            f"the data now has {split.n_users} users / {split.n_items} items, the model was "
            f"trained on {model.num_users} / {model.num_items}"
        )
    return model, data_cfg, split, None, Path(str(artifact))


def segment(
    run: str | None = None,
    artifact: str | None = None,
    features: str = "both",
    k: int | None = None,
    k_range: list[int] | None = None,
    seed: int = 0,
    n_init: int = 10,
    silhouette_sample: int = 5000,
    out: str | None = None,
    data_root: str | None = None,
    plot: bool = True,
    trust: list[str] | None = None,
    allow_unfinished: bool = False,
) -> dict[str, Any]:
    """Segment the users of a run (see the module docstring); returns the ``segments.json`` dict.
    ``trust`` and ``allow_unfinished``: as :func:`~recsys.training.runs.open_run`."""
    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    if k is not None and (not isinstance(k, int) or k < 2):
        raise ConfigError(f"k must be null or an integer >= 2, got {k!r}")
    model, data_cfg, split, run_dir, art_dir = _load(
        run, artifact, data_root, trust, allow_unfinished
    )
    history = split.test_input if split.test_input is not None else split.train.concat(split.val)
    event_clock = bool(data_cfg.get("rows_in_time_order"))
    rfm, rfm_names, raw = rfm_features(history, event_clock=event_clock)
    blocks, used, notes = [], [], []
    if features in ("rfm", "both"):
        blocks.append(_unit_block(rfm))
        used += rfm_names
        notes = rfm_notes(history, str(data_cfg.get("name")), event_clock)
        for note in notes:
            log.warning("features=%s: RFM is %s; %s", features, "+".join(rfm_names), note)
    if features in ("embedding", "both"):
        emb = representation(model, history)
        blocks.append(_unit_block(emb))
        used.append(f"user_representation[{emb.shape[1]}]")
    x = np.concatenate(blocks, 1)
    scores: dict[int, float] = {}
    if k is None:
        ks = list(range(int((k_range or [2, 10])[0]), int((k_range or [2, 10])[-1]) + 1))
        k, scores = choose_k(x, ks, seed, silhouette_sample, n_init)
    if k >= len(x):
        raise ConfigError(f"k={k} is not smaller than the number of users ({len(x)})")
    labels = kmeans(x, k, seed, n_init)

    out_dir = Path(out) if out else (run_dir or art_dir) / "segments"
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = history.user_ids
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["user", "segment"])
    for uid, s in zip(ext.tolist(), labels.tolist(), strict=False):
        w.writerow([uid, s])
    atomic_write(out_dir / "segments.csv", lambda f: f.write(text.getvalue().encode()))
    written = [out_dir / "segments.csv"]

    per_user = _per_user(run_dir)
    segs = []
    for s in range(k):
        m = labels == s
        entry: dict[str, Any] = {
            "segment": s,
            "size": int(m.sum()),
            "share": float(m.mean()),
            "activity": _quantiles(raw["frequency"][m]),
        }
        for key in ("recency_days", "recency_events"):
            if key in raw:
                entry[key] = _quantiles(raw[key][m])
        if "mean_rating" in raw:
            entry["mean_rating"] = float(raw["mean_rating"][m].mean())
        entry["top_items"] = top_items_by_lift(history, labels, s)
        if per_user is not None:
            rows = m[per_user["user"]]
            entry["test_users"] = int(rows.sum())
            # an item slice's values (cold/..., warm/...) are NaN for users without a target
            # there: its mean is over the segment's users that have one
            entry["test"] = {
                key: float(np.nanmean(v[rows]))
                for key, v in per_user.items()
                if key != "user" and rows.any() and not np.isnan(v[rows]).all()
            }
        segs.append(entry)
    _add_titles(segs, data_cfg)
    result = {
        "source": str(run_dir or art_dir),
        "features": features,
        "feature_columns": used,
        "rfm_notes": notes,
        "k": int(k),
        "silhouette": {str(kk): v for kk, v in scores.items()},
        "seed": seed,
        "n_users": int(len(labels)),
        "segments": segs,
    }
    write_json(out_dir / "segments.json", result)
    written.append(out_dir / "segments.json")
    png = out_dir / "segments.png"
    if plot and _plot(x, labels, segs, png, seed):
        written.append(png)
    elif png.is_file():  # an earlier segmentation's picture would pass for this one's
        png.unlink()
        log.info("removed %s: it showed an earlier segmentation", png)
    result["written"] = [str(p) for p in written]  # what this call wrote (not in segments.json)
    return result


def _per_user(run_dir: Path | None) -> dict[str, np.ndarray] | None:
    if run_dir is None or not (run_dir / "per_user_test.npz").is_file():
        return None
    with np.load(run_dir / "per_user_test.npz", allow_pickle=False) as z:
        return {key: z[key] for key in z.files if z[key].dtype.kind in "iufb"}  # not group labels


def _add_titles(segs: list[dict[str, Any]], data_cfg: dict[str, Any]) -> None:
    try:
        from recsys.data.metadata import item_titles

        titles = item_titles(data_cfg)
    except Exception:  # noqa: BLE001 - titles are a nicety; a broken side file must not fail
        titles = None
    if not titles:
        return
    for s in segs:
        for it in s["top_items"]:
            if str(it["item"]) in titles:
                it["title"] = titles[str(it["item"])]


def _plot(
    x: np.ndarray, labels: np.ndarray, segs: list[dict[str, Any]], path: Path, seed: int
) -> bool:
    """Write the picture to ``path`` (atomically); False, with a warning, when it could not be
    drawn (no matplotlib, a drawing error): the segments stand without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        log.warning("segments.png not written: matplotlib is not available (%s)", e)
        return False
    try:
        fig = _figure(plt, x, labels, segs, seed)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
    except Exception as e:  # noqa: BLE001 - a picture must not fail the segmentation
        log.warning("segments.png not written: %s: %s", type(e).__name__, e)
        plt.close("all")
        return False
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return True


def _figure(plt: Any, x: np.ndarray, labels: np.ndarray, segs: list[dict[str, Any]], seed: int):
    """Left: a 2-D PCA projection of (at most 5,000 sampled) users coloured by segment; right:
    segment sizes and, when the run has per-user test values, NDCG@10 per segment."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:5000]
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc[idx], full_matrices=False)
    p = xc[idx] @ vt[:2].T if vt.shape[0] >= 2 else np.c_[xc[idx, :1], np.zeros((len(idx), 1))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    sc = a.scatter(p[:, 0], p[:, 1], c=labels[idx], cmap="tab10", s=6, alpha=0.7)
    a.set_title("users (PCA of segment features)")
    a.legend(*sc.legend_elements(), title="segment", fontsize=7, loc="best")
    ks = [s["segment"] for s in segs]
    b.bar(ks, [s["size"] for s in segs], color="lightgray")
    b.set_xlabel("segment")
    b.set_ylabel("users")
    if all("test" in s and "ndcg@10" in s["test"] for s in segs):
        b2 = b.twinx()
        b2.plot(ks, [s["test"]["ndcg@10"] for s in segs], "o-", color="tab:red")
        b2.set_ylabel("test NDCG@10", color="tab:red")
    b.set_title("size and NDCG@10 per segment")
    fig.tight_layout()
    return fig
