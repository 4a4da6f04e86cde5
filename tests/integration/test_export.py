"""Export round trip: every model in configs/model/ → artifact → fresh process → same top-k and scores.

The in-memory reference is the model's own ``score`` on each user's full history (train + val +
test), masked and ranked here with numpy; the artifact is read back in a new Python process with
each backend it offers (the default, which is the eager rebuild; TorchScript and ONNX when asked
for), which must not import Hydra or Lightning.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.cli.recommend import main as serve_main
from recsys.cli.train import main as train_main
from recsys.data.batches import UserBatch
from recsys.data.datamodule import RecDataModule
from recsys.data.features import SplitFeatures
from recsys.errors import CheckpointError, RecsysError
from recsys.models.base import build_model
from recsys.serving.artifact import load, read_manifest
from recsys.serving.export import _history_csr, export_model
from tests.conftest import FAST_TRAINER, compose_config

MODELS = {p.stem: [f"model={p.stem}"] for p in sorted(Path(CONFIG_DIR, "model").glob("*.yaml"))}
# the synthetic item attributes, for the models whose shipped config reads them
DATA = [
    "data.n_users=120",
    "data.n_items=60",
    "data.mean_length=12",
    "data.n_groups=3",
    "++data.item_features=auto",
]
ROWS = 9  # small fixed scorer batch: the 20 reference users span several calls
# ONNX export is the slow part; the suite checks it on one model of each family that has
# one (the others get TorchScript + eager, which share the traced code path).
ONNX_MODELS = {"mf", "pop", "multvae", "sasrec"}
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
K = 10


def _reference(model, indptr, indices, users: list[int]) -> dict[str, np.ndarray]:
    hist = [indices[indptr[u] : indptr[u + 1]].tolist() for u in users]
    with torch.no_grad():
        scores = model.score(UserBatch.from_lists(users, hist)).float().numpy()
    masked = scores.astype(np.float64)
    for r, h in enumerate(hist):
        masked[r, h] = -np.inf
    top = np.stack([np.lexsort((np.arange(len(row)), -row))[:K] for row in masked])
    return {"scores": scores, "top": top}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """One artifact per model config (random init, or fitted for closed-form models)."""
    root = tmp_path_factory.mktemp("artifacts")
    base = OmegaConf.to_container(compose_config("train", DATA + ["model=pop"], root), resolve=True)
    dm = RecDataModule(base["data"], seed=int(base["seed"]))
    dm.setup()
    indptr, indices, _ = _history_csr(dm.data)
    users = [int(u) for u in np.flatnonzero(np.diff(indptr) > 0)[:20]]
    features = SplitFeatures.of(dm.data)
    schema = features.schema()
    out = {}
    for name, overrides in MODELS.items():
        config = OmegaConf.to_container(
            compose_config("train", DATA + overrides, root), resolve=True
        )
        torch.manual_seed(0)
        model = build_model(config["model"], dm.n_users, dm.n_items, feature_schema=schema)
        if model.feats.active:
            model.set_features(features)
        if model.train_batch is None:
            model.fit(dm.train_matrix())
        model.eval()
        path = export_model(
            model, config, dm.data, dm.fingerprint, root / name, rows=ROWS, onnx=name in ONNX_MODELS
        )
        ref = _reference(model, indptr, indices, users)
        np.savez(root / f"{name}.ref.npz", users=np.array(users), **ref)
        out[name] = path
    return out


CHECK = r"""
import json, sys
import numpy as np
import recsys
root, names = sys.argv[1], sys.argv[2].split(",")
report = {}
for name in names:
    ref = np.load(f"{root}/{name}.ref.npz")
    meta = json.load(open(f"{root}/{name}/artifact.json"))
    backends = ["auto"] + [b for b in ("torchscript", "onnx") if meta["scorer"][b]]
    for b in backends:
        rec = recsys.load(f"{root}/{name}", backend=b)
        internal = ref["users"].tolist()
        ext = rec.user_ids[internal].tolist()
        got = rec.score(internal, [rec.history(u) for u in internal])
        recs = rec.recommend(ext, k=10)
        top = [[rec._item_index[i] for i in r["items"]] for r in recs]
        scale = max(1.0, float(np.abs(ref["scores"]).max()))
        report[f"{name}/{b}"] = {
            "backend": rec.backend,
            "signature": rec.signature,
            "max_err": float(np.abs(got - ref["scores"]).max()) / scale,
            "same_top": bool((np.array(top) == ref["top"]).all()),
        }
report["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "pytorch_lightning", "lightning", "omegaconf"))
print(json.dumps(report))
"""


def test_every_model_round_trips_in_a_fresh_process(artifacts):
    root = next(iter(artifacts.values())).parent
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(root), ",".join(artifacts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("imported") == [], "recsys.load must not import Hydra or Lightning"
    for name in artifacts:
        # the default runs no code from the file: the model rebuilt from weights_only tensors;
        # the traced scorers (where the model traces) only when asked for
        assert report[f"{name}/auto"]["backend"] == "eager", name
        assert report[f"{name}/auto"]["signature"] == "unsigned", name
        scorer = read_manifest(artifacts[name])["scorer"]
        if scorer["torchscript"]:
            assert report[f"{name}/torchscript"]["backend"] == "torchscript", name
        else:
            assert scorer["torchscript_error"], f"{name}: no scorer.ts and no reason recorded"
    if HAVE_ONNX:  # the export extra; without it the artifact says why there is no ONNX file
        for name in ("mf", "pop"):
            assert f"{name}/onnx" in report, f"{name}: no ONNX scorer"
    for key, r in report.items():
        assert r["max_err"] <= 1e-4, f"{key}: scores differ (relative error {r['max_err']})"
        assert r["same_top"], f"{key}: top-{K} differs from the in-memory model"


def test_artifact_contents(artifacts):
    for name, path in artifacts.items():
        meta = read_manifest(path)
        assert meta["model"]["_target_"].startswith("recsys.models."), name
        state = torch.load(path / "weights.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        ids = np.load(path / "ids.npz", allow_pickle=False)
        assert (
            len(ids["user_ids"]) == meta["num_users"] and len(ids["item_ids"]) == meta["num_items"]
        )
    mf = read_manifest(artifacts["mf"])
    emb = np.load(artifacts["mf"] / "embeddings.npz")
    # exported factors reproduce the model's scores: score(u, i) = user[u] · item[i]
    rec = load(artifacts["mf"], backend="eager")
    u = [0, 1, 2]
    scores = rec.score(u, [rec.history(x) for x in u])
    np.testing.assert_allclose(emb["user"][u] @ emb["item"].T, scores, rtol=1e-5, atol=1e-6)
    assert mf["supports_history"] is False  # MF scores depend on the user id
    assert read_manifest(artifacts["pop"])["supports_history"] is True


def test_history_and_unknown_ids(artifacts):
    pop = load(artifacts["pop"])
    history = pop.item_ids[[0, 1]].tolist()
    got = pop.recommend_history(history, k=5)
    # popularity: the most frequent training items, the history excluded (numpy ranking)
    train_counts = torch.load(artifacts["pop"] / "weights.pt", weights_only=True)["counts"].numpy()
    order = [
        i for i in np.lexsort((np.arange(len(train_counts)), -train_counts)) if i not in (0, 1)
    ][:5]
    assert got["items"] == pop.item_ids[order].tolist()
    counts = pop.item_counts  # all known events: the fallback ranking
    assert counts.sum() > train_counts.sum()

    mf = load(artifacts["mf"])
    with pytest.raises(RecsysError, match="unknown user id"):
        mf.recommend(["no-such-user", 10**9], k=5)
    with pytest.raises(RecsysError, match="known users only"):
        mf.recommend_history(history, k=5)
    fb = mf.recommend([10**9], k=5, fallback="popular")[0]
    assert (
        fb["fallback"] == "popular"
        and fb["items"] == pop.item_ids[np.lexsort((np.arange(len(counts)), -counts))[:5]].tolist()
    )
    with pytest.raises(RecsysError, match="unknown item id"):
        pop.recommend_history([10**9], k=5)
    # exclude_seen: a known user's seen items never come back
    user = int(mf.user_ids[3])
    recs = mf.recommend([user], k=20)[0]["items"]
    seen = set(mf.item_ids[mf.history(3)].tolist())
    assert recs and not seen & set(recs)


def test_corrupted_or_truncated_artifact_is_refused(artifacts, tmp_path):
    src = artifacts["mf"]
    cases = {
        "weights.pt": lambda b: b[: len(b) // 2],  # truncated
        "scorer.ts": lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:],  # same size, altered
        "artifact.json": lambda b: b[: len(b) // 3],  # truncated manifest
    }
    for name, corrupt in cases.items():
        d = tmp_path / name
        shutil.copytree(src, d)
        (d / name).write_bytes(corrupt((d / name).read_bytes()))
        with pytest.raises(CheckpointError, match="corrupted|truncated") as e:
            load(d)
        assert name in str(e.value)


@pytest.mark.slow
def test_export_cli_from_a_trained_run_and_recommend_cli(tmp_path, capsys):
    run = tmp_path / "run"
    # the Hydra task function behind recsys-train returns optimized_metric to a sweeper
    cfg = compose_config(
        "train",
        DATA
        + FAST_TRAINER
        + ["trainer.max_epochs=2", "eval.baseline=null", "optimized_metric='val/mrr@10'"],
        run,
    )
    returned = train_main.__wrapped__(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert returned == metrics["val"]["mrr@10"]
    art = tmp_path / "art"
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.export", f"run={run}", f"out={art}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchscript: scorer.ts" in proc.stdout
    assert "signature: none, unsigned (set RECSYS_ARTIFACT_KEY to sign" in proc.stdout
    for name in ("metrics.json", "manifest.json", "config.yaml", "weights.pt", "scorer.ts"):
        assert (art / name).is_file(), name
    assert json.loads((art / "metrics.json").read_text())["test"] == metrics["test"]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["data"]["fingerprint"] == metrics["data"]["fingerprint"]
    assert manifest["end_time"] and manifest["versions"]["torch"] == torch.__version__

    rec = load(art)
    users = rec.user_ids[:3].tolist()
    (tmp_path / "users.csv").write_text("user\n" + "\n".join(map(str, users + [987654321])) + "\n")
    cli = [
        str(art),
        "-k",
        "4",
    ]  # recsys-recommend in-process (the fresh-process load is tested above)
    serve_main(
        cli
        + [
            "--input",
            str(tmp_path / "users.csv"),
            "--output",
            str(tmp_path / "recs.csv"),
            "--fallback",
            "popular",
        ]
    )
    rows = [line.split(",") for line in (tmp_path / "recs.csv").read_text().splitlines()[1:]]
    assert len(rows) == 4 * 4
    want = rec.recommend(users, k=4)
    assert [r[2] for r in rows[:12]] == [str(i) for w in want for i in w["items"]]
    counts = rec.item_counts  # the unknown user gets the most popular items
    popular = rec.item_ids[np.lexsort((np.arange(len(counts)), -counts))[:4]]
    assert [r[2] for r in rows[12:]] == [str(i) for i in popular.tolist()]
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        serve_main(cli + ["--user", "987654321"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "unknown user id" in err and "Traceback" not in err
    serve_main(cli + ["--user", str(users[0])])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed[1:]] == [str(i) for i in want[0]["items"]]
