"""recsys-segment: planted taste groups recovered, RFM features, lift, outputs, refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from recsys.customer.segments import representation, rfm_features, segment, top_items_by_lift
from recsys.data.interactions import Interactions, has_clock
from recsys.data.synthetic import generate
from recsys.errors import ConfigError
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

DAY = 86_400.0


def _inter(user, item, time=None, rating=None, n_users=None, n_items=None) -> Interactions:
    user, item = np.asarray(user), np.asarray(item)
    return Interactions(
        user=user,
        item=item,
        time=None if time is None else np.asarray(time, dtype=np.float64),
        rating=None if rating is None else np.asarray(rating, dtype=np.float32),
        user_ids=np.arange(1, (n_users or user.max() + 1) + 1),
        item_ids=np.arange(1, (n_items or item.max() + 1) + 1),
    )


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    from recsys.training.train import train

    out = tmp_path_factory.mktemp("seg") / "run"
    overrides = (
        TINY_DATA
        + FAST_TRAINER[:-1]
        + [
            "~logger",
            "model=multdae",
            "trainer.max_epochs=6",
            "optim.lr=0.003",
            "eval.baseline=null",
        ]
    )
    train(compose_config("train", overrides, out))
    return out


def _ari(run, name="segments"):
    from sklearn.metrics import adjusted_rand_score

    rows = list(csv.DictReader(open(run / name / "segments.csv")))
    _, truth = generate(n_users=300, n_items=120, n_groups=4, mean_length=25)
    true = [truth["user_group"][int(r["user"]) - 1] for r in rows]
    return adjusted_rand_score(true, [int(r["segment"]) for r in rows]), rows


def test_embedding_segments_recover_planted_taste_groups(dae_run):
    result = segment(run=str(dae_run), features="embedding", k=4, seed=3)
    ari, rows = _ari(dae_run)
    assert ari > 0.6  # chance is 0; the planted groups drive 60% of each user's items
    assert len(rows) == 300 and result["n_users"] == 300
    assert sum(s["size"] for s in result["segments"]) == 300
    # every segment reports activity, lift items and the run's test metrics of its users
    for s in result["segments"]:
        assert s["activity"]["q50"] >= 1
        assert s["top_items"] and all(it["lift"] > 1 for it in s["top_items"])
        assert 0 <= s["test"]["ndcg@10"] <= 1
    # size-weighted segment metrics give back the run's overall test metric
    metrics = json.loads((dae_run / "metrics.json").read_text())
    total = sum(s["test_users"] for s in result["segments"])
    weighted = sum(s["test_users"] * s["test"]["ndcg@10"] for s in result["segments"]) / total
    assert weighted == pytest.approx(metrics["test"]["ndcg@10"], rel=1e-6)
    assert (dae_run / "segments" / "segments.png").stat().st_size > 1000


def test_segments_are_repeatable_and_k_is_chosen_by_silhouette(dae_run, tmp_path):
    kw = dict(run=str(dae_run), features="embedding", k=None, k_range=[3, 5], n_init=3, plot=False)
    a = segment(**kw, out=str(tmp_path / "a"))
    segment(**kw, out=str(tmp_path / "b"))
    assert (tmp_path / "a" / "segments.csv").read_text() == (
        tmp_path / "b" / "segments.csv"
    ).read_text()
    assert set(a["silhouette"]) == {"3", "4", "5"}
    assert str(a["k"]) == max(a["silhouette"], key=a["silhouette"].get)


def test_reports_exactly_the_files_it_wrote(dae_run, tmp_path, monkeypatch):
    """A picture is reported only when written: plot=false, or a drawing that fails, leaves none
    (and removes an earlier segmentation's, which would pass for this one's); no temporary
    file is left."""
    import recsys.customer.segments as seg

    kw = dict(run=str(dae_run), features="rfm", k=3, n_init=2, out=str(tmp_path))
    drawn = segment(**kw)
    names = ["segments.csv", "segments.json", "segments.png"]
    assert drawn["written"] == [str(tmp_path / n) for n in names]
    assert "written" not in json.loads((tmp_path / "segments.json").read_text())
    plain = segment(**kw, plot=False)
    assert plain["written"] == [str(tmp_path / n) for n in names[:2]]
    assert not (tmp_path / "segments.png").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(seg, "_figure", broken)
    failed = segment(**kw)
    assert failed["written"] == [str(tmp_path / n) for n in names[:2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == names[:2]


def test_rfm_features_hand_worked():
    # user 0: 2 events, last at day 9, ratings 4, 2; user 1: 1 event at day 10 (the log's last)
    inter = _inter([0, 0, 1], [0, 1, 1], time=[DAY, 9 * DAY, 10 * DAY], rating=[4, 2, 5])
    x, names, raw = rfm_features(inter)
    assert names == ["log_frequency", "log_recency_days", "mean_rating"]
    np.testing.assert_allclose(raw["frequency"], [2, 1])
    np.testing.assert_allclose(raw["recency_days"], [1, 0])
    np.testing.assert_allclose(raw["mean_rating"], [3, 5])
    np.testing.assert_allclose(x[:, 0], np.log1p([2, 1]))


def test_positions_are_not_a_clock():
    positions = _inter([0, 0, 0, 1, 1], [0, 1, 2, 0, 1], time=[0, 1, 2, 0, 1])
    assert not has_clock(positions)
    assert "log_recency_days" not in rfm_features(positions)[1]
    assert has_clock(_inter([0, 0, 1], [0, 1, 1], time=[5.0, 90.0, 40.0]))
    assert not has_clock(_inter([0, 1], [0, 1]))


def test_rfm_degrades_clearly_without_a_clock_or_ratings():
    from recsys.customer.segments import rfm_notes

    positions = _inter([0, 0, 0, 1, 1], [0, 1, 2, 0, 1], time=[0, 1, 2, 0, 1])
    notes = rfm_notes(positions, "amazon-beauty")
    assert rfm_features(positions)[1] == ["log_frequency"]  # frequency only
    assert len(notes) == 2 and "no recency" in notes[0] and "each user's own sequence" in notes[0]
    assert "no monetary value" in notes[1] and "'amazon-beauty'" in notes[1]
    rated = _inter([0, 1], [0, 1], time=[DAY, 2 * DAY], rating=[4, 5])
    assert rfm_notes(rated, "ml") == []


def test_rfm_recency_in_events_on_a_row_order_clock():
    # rows in event order (time = row number): u0 u1 u0 u2 u1 u1
    inter = _inter([0, 1, 0, 2, 1, 1], [0, 1, 2, 0, 1, 2], time=[0, 1, 2, 3, 4, 5])
    _, names, raw = rfm_features(inter, event_clock=True)
    assert names == ["log_frequency", "log_recency_events"]
    np.testing.assert_allclose(raw["recency_events"], [3, 0, 2])  # events after the user's last


def test_top_items_by_lift_hand_worked():
    # segment 0 = users 0, 1; item 2 appears only there (lift 2 with half the events there)
    user = [0, 0, 1, 1, 2, 2, 3, 3] * 5
    item = [2, 0, 2, 1, 0, 1, 0, 1] * 5
    inter = _inter(user, item)
    labels = np.array([0, 0, 1, 1])
    top = top_items_by_lift(inter, labels, 0, n=3, min_count=1)
    assert top[0]["item"] == 3 and top[0]["lift"] == pytest.approx(2.0)  # external id of item 2
    assert [t["lift"] for t in top] == sorted((t["lift"] for t in top), reverse=True)


def test_model_without_representation_is_refused():
    from recsys.models.ease import EASE

    with pytest.raises(ConfigError, match="EASE has no user_representation"):
        representation(EASE(num_users=2, num_items=3), _inter([0, 1], [0, 2], n_items=3))


def test_bad_arguments_are_refused(dae_run):
    with pytest.raises(ConfigError, match="features must be"):
        segment(run=str(dae_run), features="taste")
    with pytest.raises(ConfigError, match="exactly one of run"):
        segment()


def test_sequence_model_final_state_segments_recover_taste_groups(tmp_path):
    """SASRec's user representation is its final hidden state over the user's history."""
    from recsys.training.train import train

    out = tmp_path / "run"
    overrides = TINY_DATA + FAST_TRAINER[:-1]
    overrides += ["~logger", "model=sasrec", "data.split=leave_one_out", "trainer.max_epochs=8"]
    train(compose_config("train", overrides + ["optim.lr=0.003", "eval.baseline=null"], out))
    segment(run=str(out), features="embedding", k=4, seed=3)
    ari, rows = _ari(out)
    assert len(rows) == 300 and ari > 0.5  # chance is 0
