"""ONNX export is required of every model that has it today.

Each model config in configs/model/ is either in ``ONNX_EXPORTS`` (exported with ``onnx=True`` on
tiny data, the artifact must hold ``scorer.onnx``, and onnxruntime's scores must equal the
TorchScript and eager scores for known users and for new histories) or in ``NO_ONNX`` with the
reason its export fails today (recorded in ``artifact.json``), or in ``NO_TRACE`` (neither
scorer traces; the default eager backend serves it). A model whose ONNX export breaks fails
here; a model that gains ONNX fails here too, until it moves to ``ONNX_EXPORTS``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.data.batches import UserBatch
from recsys.data.datamodule import RecDataModule
from recsys.models.base import build_model
from recsys.serving.artifact import load, read_manifest
from recsys.serving.export import export_model
from tests.conftest import COLD_ITEM_FEATURE_DATA, compose_config, feature_model

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
pytestmark = pytest.mark.skipif(
    not HAVE_ONNX, reason="onnx and onnxruntime are not installed (the export extra)"
)

DATA = [
    "data.n_users=120",
    "data.n_items=60",
    "data.mean_length=12",
    "data.n_groups=3",
]
# tiny sizes: ONNX export time grows with the graph; a window of 10: truncated histories
SEQ = [
    "model.hidden_size=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.inner_size=32",
    "model.max_len=10",
]
ONNX_EXPORTS: dict[str, list[str]] = {
    "bert4rec": SEQ,
    "biased_mf": ["model.embedding_size=8"],
    "gmf": ["model.embedding_size=8"],
    "gru4rec": ["model.embedding_size=8", "model.hidden_size=16", "model.max_len=10"],
    "ials": ["model.embedding_size=8", "model.iterations=2"],
    "mf": ["model.embedding_size=8"],
    "mlp": ["model.embedding_size=8", "model.mlp_hidden_size=[16,8]"],
    "multdae": ["model.hidden_dims=[16]"],
    "multvae": ["model.hidden_dims=[32,8]"],
    "ncf": [
        "model.mf_embedding_size=8",
        "model.mlp_embedding_size=8",
        "model.mlp_hidden_size=[16,8]",
    ],
    "neumf": [
        "model.mf_embedding_size=8",
        "model.mlp_embedding_size=8",
        "model.mlp_hidden_size=[16,8]",
    ],
    "pop": [],
    "sasrec": SEQ,
    # eval mode reads the propagated embeddings from buffers: a lookup and a matmul
    "lightgcn": ["model.embedding_size=8", "model.num_layers=1"],
}
# models without an ONNX scorer today: the operator torch.onnx (opset 17) cannot export
NO_ONNX: dict[str, tuple[list[str], str]] = {
    # score(): sparse history rows times the dense item-item weight (torch.sparse.mm)
    "ease": ([], "aten::to_sparse"),
    # score(): the sparse top-k similarity matrix times the dense history (torch.sparse.mm)
    "itemknn": (["model.k=10"], "aten::sparse_coo_tensor"),
}
# models that trace to neither scorer today (the default eager backend serves them)
NO_TRACE: dict[str, tuple[list[str], str]] = {}
# closed-form cold-start baselines built from item attributes: their export (eager backend) is
# tested in test_export.py and test_export_features.py with the synthetic attributes
ATTRIBUTE_ONLY = {"attr_knn", "pop_category"}
# models whose scores depend on the history alone (recommend_history works)
SCORES_HISTORY = {"bert4rec", "ease", "gru4rec", "itemknn", "multdae", "multvae", "pop", "sasrec"}
ROWS = 5  # scorer batch: the known users below span several calls
N_USERS = 10
RTOL = 1e-5


def test_every_model_config_is_classified():
    configs = {p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml")}
    assert set(ONNX_EXPORTS) | set(NO_ONNX) | set(NO_TRACE) | ATTRIBUTE_ONLY == configs
    assert len(ONNX_EXPORTS) + len(NO_ONNX) + len(NO_TRACE) + len(ATTRIBUTE_ONLY) == len(configs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    base = OmegaConf.to_container(compose_config("train", DATA + ["model=pop"], root), resolve=True)
    dm = RecDataModule(base["data"], seed=int(base["seed"]))
    dm.setup()
    return root, dm


def _export(data, name: str, overrides: list[str]) -> Path:
    root, dm = data
    config = OmegaConf.to_container(
        compose_config("train", DATA + [f"model={name}", *overrides], root), resolve=True
    )
    torch.manual_seed(0)
    model = build_model(config["model"], dm.n_users, dm.n_items)
    if model.needs_train_matrix:
        model.set_train_matrix(dm.train_matrix())
    if model.train_batch is None:
        model.fit(dm.train_matrix())
    return export_model(
        model, config, dm.data, dm.fingerprint, root / name, rows=ROWS, torchscript=True, onnx=True
    )


@pytest.fixture(scope="module", params=sorted(ONNX_EXPORTS))
def artifact(request, data) -> tuple[str, Path]:
    """One artifact per model that exports ONNX, shared by the tests of that model."""
    return request.param, _export(data, request.param, ONNX_EXPORTS[request.param])


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    atol = RTOL * float(np.abs(want).max())  # scores near zero: relative to the model's scale
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


def test_onnx_scorer_is_written(artifact):
    name, path = artifact
    scorer = read_manifest(path)["scorer"]
    assert scorer["onnx"] == "scorer.onnx", f"{name}: no ONNX scorer ({scorer.get('onnx_error')})"
    assert "onnx_error" not in scorer
    assert (path / "scorer.onnx").is_file()
    assert scorer["torchscript"] == "scorer.ts", scorer.get("torchscript_error")
    assert read_manifest(path)["supports_history"] is (name in SCORES_HISTORY)


def test_onnx_scores_equal_torchscript_and_eager(artifact):
    name, path = artifact
    backends = {b: load(path, backend=b) for b in ("onnx", "torchscript", "eager")}
    onnx = backends.pop("onnx")
    assert onnx.backend == "onnx"
    users = [int(u) for u in np.flatnonzero(np.diff(onnx.indptr) > 0)[:N_USERS]]
    assert len(users) == N_USERS > ROWS  # several fixed-shape calls
    rng = np.random.default_rng(0)
    new = [rng.choice(onnx.num_items, size=n, replace=False) for n in (1, 4, 15)]
    cases = {
        "known users": (users, [onnx.history(u) for u in users]),
        # known users with histories the data never had (ignored by id-based models)
        "new histories": (users[:3], new),
    }
    if name in SCORES_HISTORY:  # no user at all: the history alone
        cases["anonymous histories"] = ([-1] * len(new), new)
    for case, (u, hist) in cases.items():
        got = onnx.score(u, hist)
        assert got.shape == (len(u), onnx.num_items) and np.isfinite(got).all(), case
        for b, rec in backends.items():
            _close(got, rec.score(u, hist), f"{name}, {case}: onnx vs {b}")
        # the scores depend on the input: a scorer returning constants would not pass
        assert not np.allclose(got, got[:1]) or name == "pop", f"{name}, {case}: same rows"
    # the same recommendations (items; their scores are compared above)
    ts = backends["torchscript"]
    ext = onnx.user_ids[users].tolist()
    assert [r["items"] for r in onnx.recommend(ext, k=5)] == [
        r["items"] for r in ts.recommend(ext, k=5)
    ]
    if name in SCORES_HISTORY:
        items = onnx.item_ids[new[1]].tolist()
        got = onnx.recommend_history(items, k=5)["items"]
        assert got == ts.recommend_history(items, k=5)["items"]


@pytest.mark.parametrize("name", sorted(NO_ONNX))
def test_models_without_onnx_say_why(name, data):
    """No ONNX scorer today, and the artifact says why; TorchScript still works. If this fails
    because the model now exports ONNX, move it to ONNX_EXPORTS."""
    overrides, operator = NO_ONNX[name]
    path = _export(data, name, overrides)
    scorer = read_manifest(path)["scorer"]
    assert scorer["onnx"] is None, f"{name} exports ONNX now: move it to ONNX_EXPORTS"
    assert not (path / "scorer.onnx").exists()
    assert scorer["onnx_error"].startswith("ONNX export failed: UnsupportedOperatorError")
    assert operator in scorer["onnx_error"]
    assert scorer["torchscript"] == "scorer.ts", scorer.get("torchscript_error")
    assert read_manifest(path)["supports_history"] is (name in SCORES_HISTORY)


@pytest.mark.parametrize("name", sorted(NO_TRACE))
def test_models_without_traced_scorers_say_why(name, data):
    """Neither scorer today, the reasons recorded; the default backend serves the artifact. If
    this fails because the model now traces, move it to NO_ONNX or ONNX_EXPORTS."""
    overrides, reason = NO_TRACE[name]
    path = _export(data, name, overrides)
    scorer = read_manifest(path)["scorer"]
    assert scorer["torchscript"] is None and scorer["onnx"] is None, f"{name} traces now"
    assert reason in scorer["torchscript_error"] and reason in scorer["onnx_error"]
    rec = load(path)
    assert rec.backend == "eager"
    users = [int(u) for u in np.flatnonzero(np.diff(rec.indptr) > 0)[:3]]
    assert np.isfinite(rec.score(users, [rec.history(u) for u in users])).all()


# SASRec with item attributes: the synthetic log's genre and brand, a cold-item split (some
# catalogue items have no training event: attributes alone), with and without the history match
SASREC_FEATURES = {
    "attributes": "{item: all}",
    "history_match": "{item: all, history_match: true, negatives: seen}",
}


@pytest.fixture(scope="module", params=sorted(SASREC_FEATURES))
def feature_artifact(request, tmp_path_factory):
    """(name, artifact, model in memory, cold items) of a SASRec with item attributes whose
    weights (match weights and decay included) are moved away from their initial values."""
    root = tmp_path_factory.mktemp(f"onnx_{request.param}")
    overrides = [*COLD_ITEM_FEATURE_DATA, "model=sasrec", *SEQ]
    overrides.append(f"model.features={SASREC_FEATURES[request.param]}")
    config, dm, features, model = feature_model(overrides, root)
    with torch.no_grad():
        for p in model.parameters():  # away from the zero / unit initial values
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    path = export_model(
        model, config, dm.data, dm.fingerprint, root / "art", rows=ROWS, torchscript=True, onnx=True
    )
    cold = np.flatnonzero(~features.item_seen)
    return request.param, path, model, cold, (config, dm)


def test_sasrec_with_attributes_exports_onnx_with_the_eager_scores(feature_artifact):
    """The attribute pooling (a gather and a mask instead of ``EmbeddingBag``'s padding index)
    and the history match (IDF by a scatter-add instead of ``bincount``) export: onnxruntime
    gives the eager model's scores for known users, new histories with cold items in them and
    anonymous histories, cold items' columns included."""
    name, path, model, cold, _ = feature_artifact
    scorer = read_manifest(path)["scorer"]
    assert scorer["onnx"] == "scorer.onnx", f"{name}: no ONNX scorer ({scorer.get('onnx_error')})"
    assert scorer["torchscript"] == "scorer.ts", scorer.get("torchscript_error")
    assert (model.match is not None) is (name == "history_match")
    assert len(cold) > 5
    onnx = load(path, backend="onnx")
    assert onnx.backend == "onnx"
    ts, eager = load(path, backend="torchscript"), load(path, backend="eager")
    users = [int(u) for u in np.flatnonzero(np.diff(onnx.indptr) > 0)[:N_USERS]]
    rng = np.random.default_rng(1)
    warm = np.setdiff1d(np.arange(onnx.num_items), cold)
    new = [
        rng.choice(warm, size=3, replace=False),
        np.concatenate([rng.choice(warm, size=6, replace=False), cold[:2]]),
        rng.choice(onnx.num_items, size=15, replace=False),
    ]
    cases = {
        "known users": (users, [onnx.history(u) for u in users]),
        "new histories": (users[:3], new),
        "anonymous histories": ([-1] * len(new), new),
    }
    for case, (u, hist) in cases.items():
        got = onnx.score(u, hist)
        assert got.shape == (len(u), onnx.num_items) and np.isfinite(got).all(), case
        # the model in memory, one user at a time
        with torch.no_grad():
            want = model.score(
                UserBatch.from_lists(list(range(len(hist))), [h.tolist() for h in hist])
            )
        _close(got, want.numpy(), f"{name}, {case}: onnx vs the model in memory")
        _close(got, ts.score(u, hist), f"{name}, {case}: onnx vs torchscript")
        _close(got, eager.score(u, hist), f"{name}, {case}: onnx vs eager")
        assert np.ptp(got[:, cold], axis=1).min() > 0, f"{name}, {case}: cold columns constant"
    # how the eager artifact encoded the histories: the closed form for the one-block attribute
    # model; the history match's vectors carry coordinates the encoder does not make, so
    # neither fast path reproduces them and the eager model stays
    if name == "attributes":
        assert eager.history_path == "one block, closed form"
    else:
        assert eager.history_path.startswith("eager (") and "in shape" in eager.history_path
    items = onnx.item_ids[new[1]].tolist()
    assert onnx.recommend_history(items, k=5)["items"] == ts.recommend_history(items, k=5)["items"]


def test_onnx_export_first_traces_the_match_from_the_buffers(feature_artifact, tmp_path):
    """Exported before anything else computed the items' attribute rows (ONNX only, the match's
    cache empty), the graph computes the IDF from the code buffers itself (a scatter-add, not
    ``bincount``, which ONNX lacks) and scores as the first artifact does."""
    name, path, model, _, (config, dm) = feature_artifact
    if model.match is not None:
        model.match._cache_key, model.match._cache = None, {}
    again = export_model(
        model, config, dm.data, dm.fingerprint, tmp_path / "art", rows=ROWS, torchscript=False
    )
    scorer = read_manifest(again)["scorer"]
    assert scorer["onnx"] == "scorer.onnx", f"{name}: no ONNX scorer ({scorer.get('onnx_error')})"
    first, second = load(path, backend="onnx"), load(again, backend="onnx")
    users = [int(u) for u in np.flatnonzero(np.diff(first.indptr) > 0)[:N_USERS]]
    hist = [first.history(u) for u in users]
    _close(second.score(users, hist), first.score(users, hist), f"{name}: onnx first vs after")
