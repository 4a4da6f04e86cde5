"""Similar items (planted twin ranks first), pseudonymous exports, recsys-segment and
recsys-recommend --similar from the command line."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from recsys.data.synthetic import generate
from recsys.errors import ConfigError, DataError
from recsys.serving.artifact import load, pseudonym
from recsys.serving.export import export
from tests.conftest import FAST_TRAINER, compose_config

TWIN = 999  # external id of the planted twin of item TARGET
TARGET = 5


@pytest.fixture(scope="module")
def twin_log(tmp_path_factory):
    """Synthetic log plus an item consumed by exactly the users of item TARGET, right after it."""
    df, _ = generate(n_users=300, n_items=120, n_groups=4, mean_length=25, seed=1)
    twin = df[df["item"] == TARGET].assign(item=TWIN, time=lambda d: d["time"] + 1)
    df = pd.concat([df, twin]).sort_values(["user", "time"]).reset_index(drop=True)
    path = tmp_path_factory.mktemp("twin") / "log.csv"
    df.rename(columns={"user": "user_id", "item": "item_id"}).to_csv(path, index=False)
    return path


def _run(tmp, path, model, extra=()):
    from recsys.training.train import train

    overrides = [
        "data=csv", f"data.path={path}", "data.id_type=int", "data.columns.time=time",
        "data.split=leave_one_out",
        f"data.cache_dir={tmp / 'cache'}", f"model={model}", "eval.baseline=null", "~logger",
        *FAST_TRAINER[:-1], *extra,
    ]  # fmt: skip
    out = tmp / model
    train(compose_config("train", overrides, out))
    return out


@pytest.fixture(scope="module")
def ease_artifact(twin_log, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ease")
    run = _run(tmp, twin_log, "ease")
    return run, export(
        ckpt_path=run / "checkpoints" / "best.ckpt", out=tmp / "art", torchscript=False, onnx=False
    )


def test_planted_twin_ranks_first_by_cooccurrence(ease_artifact):
    _, art = ease_artifact
    rec = load(art)
    assert "item" not in rec.meta["embeddings"]  # EASE: no item table, co-occurrence is used
    (res,) = rec.similar_items([TARGET], k=5)
    assert res["method"] == "cooccurrence" and res["items"][0] == TWIN
    assert res["scores"][0] == pytest.approx(1.0)  # identical user sets
    assert TARGET not in res["items"]
    (back,) = rec.similar_items([TWIN], k=1)
    assert back["items"] == [TARGET]


def test_planted_twin_ranks_first_by_embedding_cosine(twin_log, tmp_path):
    run = _run(
        tmp_path, twin_log, "mf", ["model.loss=softmax", "trainer.max_epochs=6", "optim.lr=0.02"]
    )
    art = export(
        ckpt_path=run / "checkpoints" / "best.ckpt",
        out=tmp_path / "art",
        torchscript=False,
        onnx=False,
    )
    (res,) = load(art).similar_items([TARGET], k=3, method="embedding")
    assert res["method"] == "embedding" and res["items"][0] == TWIN
    # its user representation cannot feed engagement features: leave-one-out training saw the
    # last events of every user, after any engagement cutoff
    from recsys.customer.engagement import build_windows, frozen_representation, full_log
    from recsys.data.pipeline import prepare

    cfg = compose_config("train", ["data=csv", f"data.path={twin_log}", "data.columns.time=time",
                                   "data.split=leave_one_out", f"data.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    inter = full_log(prepare(dict(cfg.data), 42))
    extra = frozen_representation(str(run), inter)
    assert extra[0].shape == (inter.n_users, 64) and np.abs(extra[0]).sum() > 0
    with pytest.raises(DataError, match="leak later behaviour"):
        build_windows(inter, {"horizon_days": 10, "train_windows": 1}, extra)


def test_pseudonymized_export_serves_by_hash(ease_artifact, tmp_path, monkeypatch):
    run, plain_dir = ease_artifact
    ckpt = run / "checkpoints" / "best.ckpt"
    monkeypatch.delenv("RECSYS_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="RECSYS_PSEUDONYM_KEY"):
        export(
            ckpt_path=ckpt,
            out=tmp_path / "p0",
            torchscript=False,
            onnx=False,
            pseudonymize_users=True,
        )
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "s3cret")
    art = export(
        ckpt_path=ckpt, out=tmp_path / "p", torchscript=False, onnx=False, pseudonymize_users=True
    )
    ids = np.load(art / "ids.npz")["user_ids"]
    assert all(len(u) == 64 for u in ids.tolist())
    assert not {str(u) for u in range(1, 301)} & set(ids.tolist())
    plain = load(plain_dir)
    pseudo = load(art)
    h = pseudonym(17, "s3cret")
    assert pseudo.recommend([h], k=5)[0]["items"] == plain.recommend([17], k=5)[0]["items"]
    assert pseudonym(17, "other") != h  # keyed: another key, another pseudonym
    with pytest.raises(KeyError):
        pseudo.recommend([17], k=5)


def test_recommend_similar_cli(ease_artifact, capsys):
    from recsys.cli.recommend import main

    _, art = ease_artifact
    main([str(art), "--similar", f"{TARGET}", "-k", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"similar to {TARGET}") and out[1].split()[:2] == ["1", str(TWIN)]


def test_segment_cli(ease_artifact, tmp_path, monkeypatch, capsys):
    from recsys.cli.segment import main

    run, _ = ease_artifact
    argv = ["recsys-segment", f"run={run}", "features=rfm", "k=2", "plot=false", f"out={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    out = capsys.readouterr().out
    assert "2 segments of 300 users" in out
    # plot=false: exactly the files written are reported, no picture
    assert f"wrote {tmp_path}/segments.csv, {tmp_path}/segments.json\n" in out
    assert "segments.png" not in out and not (tmp_path / "segments.png").exists()
    assert (tmp_path / "segments.csv").read_text().startswith("user,segment\n")
    monkeypatch.setattr(sys, "argv", argv[:2] + ["features=embedding", f"out={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "EASE has no user_representation" in capsys.readouterr().err
