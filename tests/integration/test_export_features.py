"""Artifacts of models trained with attributes: ``features.json``, new products, new customers.

A SASRec with item attributes (the synthetic log's ``genre`` and ``brand``, a cold-item split so
that some catalogue items have no training event and are represented by their attributes alone)
is exported and read back: the same scores for the catalogue and for new items, a new item with
a cold item's attributes scores as that item, its attribute twins are its nearest items, a
tampered ``features.json`` is refused by key, the command line answers, and an opted-out user
leaves nothing in an artifact of a model with user attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.batches import UserBatch
from recsys.data.datamodule import RecDataModule
from recsys.data.features import FeatureTable, SplitFeatures
from recsys.errors import CheckpointError, RecsysError
from recsys.models.base import build_model
from recsys.serving.artifact import KEY_ENV, MANIFEST, SIGNATURE, load, signature_record
from recsys.serving.export import _history_csr, export_model
from recsys.serving.features import FILE
from tests.conftest import COLD_ITEM_FEATURE_DATA, compose_config, feature_model

DATA = COLD_ITEM_FEATURE_DATA
SASREC = [
    "model=sasrec",
    "model.features={item: all}",
    "model.max_len=20",
    "model.hidden_size=16",
    "model.n_layers=1",
    "model.inner_size=32",
]


def attrs_of(table: FeatureTable, i: int) -> dict[str, list[str]]:
    """Entity ``i``'s attributes as an attribute dict (what a caller would send)."""
    out = {}
    for f in table.fields:
        out[f.name] = [f.vocab[c - 1] for c in table.codes[f.name][i] if c > 0]
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(artifact, model in memory, split features, histories) of a randomly initialised
    SASRec with item attributes, and an id-only SASRec's artifact beside it."""
    root = tmp_path_factory.mktemp("features")
    config, dm, features, model = feature_model(DATA + SASREC, root)
    model.eval()
    art = export_model(model, config, dm.data, dm.fingerprint, root / "art", rows=9, onnx=False)
    plain_cfg = {**config, "model": {**config["model"], "features": None}}
    plain = build_model(plain_cfg["model"], dm.n_users, dm.n_items)
    plain_art = export_model(
        plain, plain_cfg, dm.data, dm.fingerprint, root / "plain", rows=9, onnx=False
    )
    indptr, indices, _ = _history_csr(dm.data)
    return {
        "art": art,
        "plain": plain_art,
        "model": model,
        "features": features,
        "hist": lambda u: indices[indptr[u] : indptr[u + 1]],
        "users": [int(u) for u in np.flatnonzero(np.diff(indptr) > 0)[:12]],
        "split": (config, dm.data, dm.fingerprint),
    }


def cold_items(exported) -> list[int]:
    return np.flatnonzero(~exported["features"].item_seen).tolist()


def external(rec, users: list[int]) -> list:
    return rec.user_ids[users].tolist()


def test_features_json_holds_the_schema_and_names_nobody(exported):
    rec = load(exported["art"])
    assert rec.meta["version"] == 3 and FILE in rec.meta["files"]
    data = json.loads((exported["art"] / FILE).read_text())
    assert sorted(data) == ["format", "item", "user", "version"] and data["user"] is None
    assert [f["name"] for f in data["item"]] == ["brand", "genre"]
    assert data["item"] == exported["features"].schema()["item"]
    assert rec.meta["embeddings_source"] == "model.item_vectors()"
    # an id-only model's artifact is what it was: version 2, no features.json
    plain = load(exported["plain"])
    assert plain.meta["version"] == 2 and FILE not in plain.meta["files"]
    assert plain.features is None and not (exported["plain"] / FILE).exists()


@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_round_trip_scores(exported, backend):
    """Catalogue and new-item scores after reload equal the model's in memory."""
    model, users = exported["model"], exported["users"]
    rec = load(exported["art"], backend=backend)
    hists = [exported["hist"](u) for u in users]
    with torch.no_grad():
        batch = UserBatch.from_lists(users, [h.tolist() for h in hists])
        want = model.score(batch).numpy()
        table = exported["features"].item.encode_rows(
            [{"genre": "g1", "brand": ["n2"]}, {"genre": ["g0", "g2"]}, {}]
        )
        want_new = (model.user_representation(batch) @ model.new_item_vectors(table).T).numpy()
    np.testing.assert_allclose(rec.score(users, hists), want, rtol=1e-4, atol=1e-5)
    new = rec.score_new_items(
        [{"genre": "g1", "brand": ["n2"]}, {"genre": ["g0", "g2"]}, {}], users=external(rec, users)
    )
    assert new.shape == (len(users), 3)
    np.testing.assert_allclose(new, want_new, rtol=1e-4, atol=1e-5)


def test_a_new_item_like_a_cold_item_scores_as_it(exported):
    rec, users = load(exported["art"]), exported["users"]
    table = exported["features"].item
    cold = cold_items(exported)[:5]
    assert cold, "the split has no cold items"
    scores = rec.score(users, [exported["hist"](u) for u in users])
    new = rec.score_new_items([attrs_of(table, i) for i in cold], users=external(rec, users))
    np.testing.assert_allclose(new, scores[:, cold], rtol=1e-4, atol=1e-5)
    # in a ranking: the new item sits next to its twin, with the same score
    name = "new-sku"
    row = rec.recommend(
        external(rec, users[:1]),
        k=rec.num_items + 1,
        exclude_seen=False,
        new_items={name: attrs_of(table, cold[0])},
    )[0]
    got = dict(zip(row["items"], row["scores"], strict=True))
    assert got[name] == pytest.approx(got[rec.item_ids[cold[0]].item()], rel=1e-4, abs=1e-5)


def test_similar_ranks_attribute_twins_first(exported):
    rec, table = load(exported["art"]), exported["features"].item
    cold = cold_items(exported)
    groups: dict[str, list[int]] = {}
    for i in cold:
        groups.setdefault(json.dumps(attrs_of(table, i), sort_keys=True), []).append(i)
    twins = max(groups.values(), key=len)
    assert len(twins) >= 2, "no two cold items share their attributes"
    out = rec.similar(attrs_of(table, twins[0]), k=len(twins) + 1)
    assert out["items"][: len(twins)] == rec.item_ids[sorted(twins)].tolist()
    np.testing.assert_allclose(out["scores"][: len(twins)], 1.0, rtol=1e-6)
    assert out["scores"][len(twins)] < 1 - 1e-6
    # the catalogue's own similar_items uses the same vectors (embeddings.npz)
    known = rec.similar_items([rec.item_ids[twins[0]].item()], k=len(twins) - 1)[0]
    assert known["method"] == "embedding"
    assert sorted(known["items"]) == rec.item_ids[sorted(twins[1:])].tolist()


def test_top_users_rank_by_the_new_items_score(exported):
    rec = load(exported["art"])
    attrs = {"genre": "g2", "brand": "n1"}
    out = rec.top_users(attrs, k=5)
    all_scores = rec.score_new_items([attrs], users=rec.user_ids.tolist())[:, 0]
    order = np.lexsort((np.arange(len(all_scores)), -all_scores.astype(np.float64)))[:5]
    assert out["users"] == rec.user_ids[order].tolist()
    np.testing.assert_allclose(out["scores"], all_scores[order], rtol=1e-5)


def test_new_customer(exported):
    rec = load(exported["art"])
    history = rec.item_ids[exported["hist"](exported["users"][0])[:3]].tolist()
    row = rec.recommend(history=history, k=5)[0]
    assert row["user"] is None
    assert row["items"] == rec.recommend_history(history, k=5)["items"]
    with_new = rec.recommend(history=history, k=rec.num_items, new_items={"x": {"genre": "g1"}})
    assert "x" in with_new[0]["items"]
    with pytest.raises(RecsysError, match=r"^SASRec takes no customer attributes .*history$"):
        rec.recommend(attributes={"segment": "g1"})
    popular = rec.recommend(attributes={"segment": "g1"}, fallback="popular", k=3)[0]
    assert popular["fallback"] == "popular" and len(popular["items"]) == 3
    with pytest.raises(RecsysError, match="not both"):
        rec.recommend(external(rec, [1]), history=history)


def test_attribute_dicts_are_checked(exported):
    rec, users = load(exported["art"]), external(load(exported["art"]), exported["users"][:2])
    with pytest.raises(
        RecsysError, match=r"unknown item attribute 'colour' \(fields: brand, genre"
    ):
        rec.score_new_items([{"colour": "red"}], users=users)
    with pytest.raises(RecsysError, match=r"items\[1\]: genre must be a value or a list"):
        rec.score_new_items([{}, {"genre": {"a": 1}}], users=users)
    with pytest.raises(RecsysError, match="is the id of a catalogue item"):
        rec.recommend(users, new_items={rec.item_ids[0].item(): {"genre": "g1"}})
    # a value outside the training vocabulary is unknown: as if not given
    np.testing.assert_allclose(
        rec.score_new_items([{"genre": "never-seen", "brand": "n1"}], users=users),
        rec.score_new_items([{"brand": "n1"}], users=users),
    )
    plain = load(exported["plain"])
    with pytest.raises(RecsysError, match="^SASRec uses no item attributes"):
        plain.similar({"genre": "g1"})


def rehash(art: Path, name: str, key: str | None = None) -> None:
    """The manifest's checksum of ``name`` and the digest redone: what anyone can do."""
    meta = json.loads((art / MANIFEST).read_text())
    data = (art / name).read_bytes()
    meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    raw = (json.dumps(meta, indent=2) + "\n").encode()
    (art / MANIFEST).write_bytes(raw)
    (art / SIGNATURE).write_bytes(signature_record(raw, key.encode() if key else None))


def tamper(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    data = json.loads((dest / FILE).read_text())
    edit(data)
    (dest / FILE).write_text(json.dumps(data, indent=2) + "\n")
    return dest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["item"][0].update(kind="exec"), r"item\[0\]\.kind must be one of"),
        (lambda d: d["item"][1].update(evil=1), r"item\[1\]: unknown key 'evil'"),
        (lambda d: d.update(target="os.system"), r"unknown key 'target'"),
        (lambda d: d["item"][0].update(std=-1.0), r"item\[0\]\.std must be positive"),
        (lambda d: d["item"][0].update(vocab=[1, 2]), r"item\[0\]\.vocab must be a list of str"),
        (lambda d: d["item"][0].pop("width"), r"item\[0\]\.width is missing"),
        (lambda d: d["item"].append(d["item"][0]), r"item: field 'brand' is given twice"),
        (lambda d: d["item"][0]["vocab"].pop(), r"weights\.pt: weights not loadable"),
    ],
)
def test_a_crafted_features_json_is_refused_by_key(exported, tmp_path, edit, message):
    art = tamper(exported["art"], tmp_path / "art", edit)
    with pytest.raises(CheckpointError, match="features.json: corrupted"):
        load(art)  # not rehashed: the checksum catches it
    rehash(art, FILE)
    with pytest.raises(CheckpointError, match=message) as e:
        load(art)
    assert "\n" not in str(e.value)


def test_recsys_recommend_refuses_a_crafted_features_json(exported, tmp_path):
    art = tamper(exported["art"], tmp_path / "art", lambda d: d["item"][0].update(kind="exec"))
    rehash(art, FILE)
    p = cli(str(art), "--user", str(load(exported["art"]).user_ids[0]))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == (
        f"error: {art / FILE}: item[0].kind must be one of categorical, numeric, got 'exec'"
    )


def test_a_resigned_features_json_without_the_key_is_refused(exported, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "the user's key")
    signed = export_model(
        exported["model"],
        *exported["split"],
        tmp_path / "signed",
        rows=9,
        torchscript=False,
        onnx=False,
    )
    assert load(signed).signature == "verified"
    art = tamper(signed, tmp_path / "art", lambda d: d["item"][0]["vocab"].reverse())
    rehash(art, FILE, key="another key")
    with pytest.raises(CheckpointError, match="hmac_sha256 does not match"):
        load(art)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli.recommend", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_new_products_and_customers(exported, tmp_path):
    art, rec = str(exported["art"]), load(exported["art"])
    attrs = '{"genre": ["g1"], "brand": "n2"}'
    p = cli(art, "--item-attributes", attrs, "-k", "4")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    want = rec.top_users({"genre": ["g1"], "brand": "n2"}, k=4)
    assert lines[0] == "users for new1" and [ln.split()[1] for ln in lines[1:]] == [
        str(u) for u in want["users"]
    ]
    out = tmp_path / "similar.csv"
    p = cli(art, "--item-attributes", attrs, "--similar-items", "-k", "3", "--output", str(out))
    assert p.returncode == 0, p.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "item,rank,similar_item,score,title" and len(rows) == 4
    assert [r.split(",")[2] for r in rows[1:]] == [
        str(i) for i in rec.similar({"genre": ["g1"], "brand": "n2"}, k=3)["items"]
    ]
    user = str(rec.user_ids[exported["users"][0]])
    k = str(rec.num_items + 1)
    p = cli(art, "--user", user, "--item-attributes", attrs, "-k", k, "--include-seen")
    assert p.returncode == 0, p.stderr
    assert "new1" in p.stdout.split()
    history = ",".join(str(i) for i in rec.item_ids[exported["hist"](exported["users"][0])[:3]])
    p = cli(art, "--history", history, "-k", "3")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"new customer: history {history}"
    for args, message in (
        (["--attributes", '{"age": '], "error: --attributes: not JSON ("),
        (["--item-attributes", "[1]"], "error: --item-attributes: give a JSON object"),
        (["--item-attributes", '{"colour": "red"}'], "unknown item attribute 'colour'"),
        (["--attributes", '{"segment": "g1"}'], "error: SASRec takes no customer attributes"),
        (["--similar-items"], "error: give one of --user"),
    ):
        p = cli(art, *args)
        assert p.returncode == 2, (args, p.stdout)
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    help_text = cli("--help").stdout
    for flag in ("--item-attributes", "--attributes", "--history", "--similar-items"):
        assert flag in help_text


# -- privacy: user attributes, pseudonyms and opt-out ----------------------------------------


def _log(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A tiny log of customers cust-000.. and products sku-00.., their attributes, and an
    opt-out list naming cust-005, the only customer whose occupation is "astronaut"."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,time"]
    for u in range(40):
        for t, i in enumerate(rng.choice(30, size=8, replace=False)):
            rows.append(f"cust-{u:03d},sku-{i:02d},{u * 100 + t}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    users = ["user_id,occupation,age"]
    for u in range(40):
        job = "astronaut" if u == 5 else ("clerk", "nurse", "chef")[u % 3]
        users.append(f"cust-{u:03d},{job},{20 + u % 30}")
    user_attrs = tmp_path / "users.csv"
    user_attrs.write_text("\n".join(users) + "\n")
    items = ["item_id,category"] + [f"sku-{i:02d},c{i % 4}" for i in range(30)]
    item_attrs = tmp_path / "items.csv"
    item_attrs.write_text("\n".join(items) + "\n")
    optout = tmp_path / "optout.txt"
    optout.write_text("cust-005\n")
    return log, user_attrs, item_attrs, optout


@pytest.mark.parametrize("name", ["mf", "neumf"])
def test_user_attributes_with_opt_out_and_pseudonyms(tmp_path, monkeypatch, name):
    """MF and NeuMF with user and item attributes: a new customer and a new product are scored
    as the model in memory scores them; no file of the pseudonymised artifact names a customer,
    and the opted-out one has no id, no attribute row and no vocabulary entry there."""
    log, user_attrs, item_attrs, optout = _log(tmp_path)
    overrides = [
        "data=csv",
        f"data.path={log}",
        "data.columns.time=time",
        "data.split=leave_one_out",
        "data.cache=false",
        f"data.exclude_users={optout}",
        f"++data.user_features={user_attrs}",
        "++data.user_feature_columns={id: user_id, categorical: [occupation], numeric: [age]}",
        f"++data.item_features={item_attrs}",
        "++data.item_feature_columns={id: item_id, categorical: [category]}",
        f"model={name}",
        "model.features={user: all, item: all}",
    ]
    config = OmegaConf.to_container(compose_config("train", overrides, tmp_path), resolve=True)
    dm = RecDataModule(config["data"], seed=0)
    dm.setup()
    features = SplitFeatures.of(dm.data)
    assert "cust-005" not in dm.data.train.user_ids.tolist()
    torch.manual_seed(0)
    model = build_model(config["model"], dm.n_users, dm.n_items, feature_schema=features.schema())
    model.set_features(features)
    model.eval()
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "pseudonym key")
    art = export_model(
        model,
        config,
        dm.data,
        dm.fingerprint,
        tmp_path / "art",
        torchscript=False,
        onnx=False,
        pseudonymize_users=True,
    )
    rec = load(art)
    assert rec.features is not None and rec.features.names("user") == ["occupation", "age"]
    # no file of the artifact holds an external user id, nor the opted-out user's occupation
    for f in art.iterdir():
        data = f.read_bytes()
        assert b"cust-" not in data and b"astronaut" not in data, f.name
    from recsys.serving.artifact import pseudonym

    assert pseudonym("cust-005", "pseudonym key") not in rec.user_ids.tolist()
    assert pseudonym("cust-006", "pseudonym key") in rec.user_ids.tolist()
    # every user attribute buffer has one row per known user: by internal id, nothing more
    state = torch.load(art / "weights.pt", weights_only=True)
    buffers = {k for k, _ in model.named_buffers() if k.startswith("user_attrs.")}
    rows = {k: state[k].shape[0] for k in buffers if state[k].ndim}
    assert rows and set(rows.values()) == {rec.num_users}, rows
    # a new customer and a new product, scored as the model in memory scores them
    customer = {"occupation": "nurse", "age": 31}
    product = {"category": "c2"}
    with torch.no_grad():
        u = model.new_user_vectors(features.user.encode_rows([customer]))
        want = model.score_vectors(u, model.item_vectors())[0].numpy()
        new = model.new_item_vectors(features.item.encode_rows([product]))
        want_new = model.score_vectors(u, new)[0, 0].item()
    out = rec.recommend(attributes=customer, k=rec.num_items + 1, exclude_seen=False,
                        new_items={"new": product})[0]  # fmt: skip
    got = dict(zip(out["items"], out["scores"], strict=True))
    np.testing.assert_allclose([got[i] for i in rec.item_ids.tolist()], want, rtol=1e-4, atol=1e-5)
    assert got["new"] == pytest.approx(want_new, rel=1e-4, abs=1e-5)
    # the history of a new customer described by attributes is left out of the answer
    seen = rec.item_ids[:3].tolist()
    out = rec.recommend(attributes=customer, history=seen, k=rec.num_items)[0]
    assert not set(seen) & set(out["items"]) and len(out["items"]) == rec.num_items - 3
    # a model whose scores depend on the user id alone still cannot score a bare history
    with pytest.raises(RecsysError, match="scores known users only .* or attributes=..."):
        rec.recommend(history=seen)


@pytest.mark.slow
def test_recsys_export_of_a_trained_run_with_attributes(tmp_path):
    """recsys-train → recsys-export (a subprocess) → the artifact scores as the checkpoint."""
    from recsys.training.runs import open_run
    from recsys.training.train import train
    from tests.conftest import FAST_TRAINER

    run = tmp_path / "run"
    overrides = DATA + SASREC + FAST_TRAINER + ["trainer.max_epochs=1", "eval.baseline=null"]
    train(compose_config("train", overrides, run))
    art = tmp_path / "art"
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.export", f"run={run}", f"out={art}", "onnx=false"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "attributes: item brand, genre" in proc.stdout
    opened = open_run(run)
    model = opened.module.model.eval()
    rec = load(art)
    assert rec.features is not None and rec.features.schema()["item"] == [
        dict(f) for f in model.feats.item
    ]
    users = list(range(8))
    hists = [rec.history(u) for u in users]
    with torch.no_grad():
        batch = UserBatch.from_lists(users, [h.tolist() for h in hists])
        want = model.score(batch).numpy()
        table = opened.datamodule.data.item_features.encode_rows([{"genre": "g0"}])
        want_new = (model.user_representation(batch) @ model.new_item_vectors(table).T).numpy()
    np.testing.assert_allclose(rec.score(users, hists), want, rtol=1e-4, atol=1e-5)
    got_new = rec.score_new_items([{"genre": "g0"}], users=rec.user_ids[users].tolist())
    np.testing.assert_allclose(got_new, want_new, rtol=1e-4, atol=1e-5)
    p = cli(str(art), "--item-attributes", '{"genre": "g0"}', "-k", "3")
    assert p.returncode == 0 and p.stdout.splitlines()[0] == "users for new1", p.stderr
