"""Opt-out: users in data.exclude_users appear in no output file; the run records count and hash."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from recsys.data.pipeline import fingerprint, prepare
from recsys.errors import ConfigError
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

EXCLUDED = [7, 42, 123, 250]


def _ids_in_npz(path):
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            out[k] = z[k]
    return out


def test_excluded_users_appear_in_no_output(tmp_path):
    from recsys.customer.segments import segment
    from recsys.serving.export import export
    from recsys.training.train import train

    optout = tmp_path / "optout.txt"
    optout.write_text("# opted out\n" + "\n".join(map(str, EXCLUDED)) + "\n\n99999\n")
    run = tmp_path / "run"
    overrides = (
        TINY_DATA
        + FAST_TRAINER[:-1]
        + ["~logger", "trainer.max_epochs=1", f"data.exclude_users={optout}"]
    )
    metrics = train(compose_config("train", overrides, run))

    digest = hashlib.sha256(optout.read_bytes()).hexdigest()
    record = {"file_sha256": digest, "users_listed": 5, "users_removed": 4}
    manifest = json.loads((run / "manifest.json").read_text())
    assert {k: manifest["opt_out"][k] for k in record} == record
    assert {k: metrics["data"]["audit"]["opt_out"][k] for k in record} == record
    assert metrics["data"]["n_users"] == 300 - len(EXCLUDED)

    # internal ids of the run map to external ids without the excluded ones
    split = prepare(compose_config("train", overrides, run).data, 42)
    kept = set(split.train.user_ids.tolist())
    assert not kept & set(EXCLUDED) and len(kept) == 296
    per_user = _ids_in_npz(run / "per_user_test.npz")
    assert per_user["user"].max() < 296

    segment(run=str(run), features="rfm", k=3, plot=False)
    seg_users = [
        line.split(",")[0]
        for line in (run / "segments" / "segments.csv").read_text().splitlines()[1:]
    ]
    assert len(seg_users) == 296 and not set(seg_users) & {str(u) for u in EXCLUDED}

    art = tmp_path / "artifact"
    export(
        ckpt_path=str(run / "checkpoints" / "best.ckpt"),
        out=str(art),
        torchscript=False,
        onnx=False,
    )
    ids = _ids_in_npz(art / "ids.npz")
    assert not set(ids["user_ids"].tolist()) & set(EXCLUDED) and len(ids["user_ids"]) == 296
    hist = _ids_in_npz(art / "history.npz")
    assert len(hist["indptr"]) == 297
    # the run names the opt-out list by its hash and counts only: no file lists its ids
    assert "users" not in manifest["opt_out"] and "ids" not in manifest["opt_out"]


def test_exclusion_changes_the_fingerprint_and_cache_key(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1\n")
    b.write_text("2\n")
    base = {"name": "x", "source": "recsys.data.synthetic.load"}
    fa, fb = (
        fingerprint({**base, "exclude_users": str(a)}),
        fingerprint({**base, "exclude_users": str(b)}),
    )
    assert fa != fb != fingerprint(base)
    b.write_text("1\n")  # same content, another path: same data
    assert fingerprint({**base, "exclude_users": str(b)}) == fa


def test_missing_optout_file_is_refused(tmp_path):
    cfg = {"name": "s", "source": "recsys.data.synthetic.load", "n_users": 50, "n_items": 30,
           "exclude_users": str(tmp_path / "nope.txt")}  # fmt: skip
    with pytest.raises(ConfigError, match="data.exclude_users: no such file"):
        prepare(cfg, 0)
