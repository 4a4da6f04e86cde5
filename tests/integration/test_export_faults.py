"""Exports that are never half-finished.

An export killed at any point (SIGKILL: no handler runs) leaves under the artifact's name either
the previous artifact or the new one, each complete, or, between the two renames of the fallback
swap, nothing; never a mix. Run again, it removes what the killed one left and its result equals
an uninterrupted export's. Files of an earlier export never enter a new manifest.

Two kinds of trial: kills at named points of the export (a subprocess that stops itself there;
fast, deterministic), and kills of the real ``recsys-export`` command at random times (slow).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.datamodule import RecDataModule
from recsys.errors import CheckpointError, ConfigError
from recsys.models.base import build_model
from recsys.serving.artifact import KEY_ENV, MANIFEST, SIGNATURE, load, read_artifact
from recsys.serving.export import _exchange, export, export_model, remove_stale_exports
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, compose_config

DATA = ["data.n_users=120", "data.n_items=60", "data.mean_length=12", "data.n_groups=3"]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def siblings(out: Path) -> list[str]:
    """Temporary folders of exports into ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def weights(art: Path) -> dict[str, torch.Tensor]:
    return torch.load(art / "weights.pt", map_location="cpu", weights_only=True)


def assert_same_artifact(a: Path, b: Path) -> None:
    """Same files; same bytes where an export is deterministic, same arrays and same scores
    (default and TorchScript backends) otherwise."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    meta_a, meta_b = (json.loads((x / MANIFEST).read_text()) for x in (a, b))
    files_a, files_b = meta_a.pop("files"), meta_b.pop("files")
    assert meta_a == meta_b and sorted(files_a) == sorted(files_b)
    for name in ("config.yaml", "metrics.json", "manifest.json"):
        if name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in (n for n in names if n.endswith(".npz")):
        with np.load(a / name) as za, np.load(b / name) as zb:
            assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files)
    for backend in ("auto", "torchscript"):
        ra, rb = load(a, backend=backend), load(b, backend=backend)
        users = list(range(min(ra.num_users, 40)))
        hist = [ra.history(u) for u in users]
        np.testing.assert_array_equal(ra.score(users, hist), rb.score(users, hist))


# -- kills at named points --------------------------------------------------------------------

# The driver exports the model of seed argv[3] into argv[2] and SIGKILLs itself at argv[4].
DRIVER = r"""
import json, os, shutil, signal, sys
import torch
from recsys.data.datamodule import RecDataModule
from recsys.models.base import build_model
import recsys.serving.export as ex

config = json.load(open(sys.argv[1]))
out, seed, point = sys.argv[2], int(sys.argv[3]), sys.argv[4]
dm = RecDataModule(config["data"], seed=int(config["seed"]))
dm.setup()
torch.manual_seed(seed)
model = build_model(config["model"], dm.n_users, dm.n_items)

def die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)

def after(fn):
    def wrapped(*a, **k):
        result = fn(*a, **k)
        die()
        return result
    return wrapped

if point == "weights written":
    ex.torch.save = after(torch.save)
elif point == "tracing":
    ex._write_torchscript = die
elif point == "manifest written":  # artifact.json written, artifact.sig not
    ex.signature_record = die
elif point == "before the swap":  # the new folder complete and flushed
    ex._swap_in = die
elif point == "exchanged":  # the new artifact in place, the old one not yet removed
    ex._exchange = after(ex._exchange)
elif point == "moved aside":  # no atomic exchange: the old one moved aside, the new not in
    ex._exchange = lambda a, b: False
    rename = os.rename
    ex.os.rename = lambda a, b: (rename(a, b), die())
elif point == "removing the old one":
    rmtree = shutil.rmtree
    ex.shutil.rmtree = lambda p, *a, **k: (rmtree(p, *a, **k) if k.get("ignore_errors") else (
        [os.unlink(f) for f in sorted(os.scandir(p), key=lambda e: e.name)[:3]], die()))
ex.export_model(model, config, dm.data, dm.fingerprint, out, rows=9, onnx=False)
print("finished")
"""
# where each kill leaves the name: the previous artifact, the new one, or nothing
POINTS = {
    "weights written": "old",
    "tracing": "old",
    "manifest written": "old",
    "before the swap": "old",
    "exchanged": "new",  # "old" where the file system has no atomic exchange (then: moved aside)
    "moved aside": None,
    "removing the old one": "new",
}


def exchange_works(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return _exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The run config (as JSON for the driver), the data, and reference artifacts of the models
    of seeds 0 (the previous artifact) and 1 (the new one), exported uninterrupted."""
    root = tmp_path_factory.mktemp("faults")
    config = OmegaConf.to_container(
        compose_config("train", DATA + ["model=mf"], root), resolve=True
    )
    (root / "config.json").write_text(json.dumps(config))
    dm = RecDataModule(config["data"], seed=int(config["seed"]))
    dm.setup()
    refs = {}
    for name, seed in (("old", 0), ("new", 1)):
        torch.manual_seed(seed)
        model = build_model(config["model"], dm.n_users, dm.n_items)
        refs[name] = export_model(
            model, config, dm.data, dm.fingerprint, root / f"ref-{name}", rows=9, onnx=False
        )
    return root, config, dm, refs


def driver(config_json: Path, out: Path, seed: int, point: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(config_json), str(out), str(seed), point],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_at_a_named_point(setup, tmp_path, point):
    root, config, dm, refs = setup
    out = tmp_path / "art"
    shutil.copytree(refs["old"], out)
    proc = driver(root / "config.json", out, 1, point)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
    want = POINTS[point]
    if point == "exchanged" and not exchange_works(tmp_path):
        want = "old"
    if want is None:
        assert not out.exists()
    else:  # complete, digest and checksums consistent, and the one expected
        read_artifact(out)
        assert_same_artifact(out, refs[want])
    assert siblings(out), "a killed export leaves its temporary folder (removed next time)"
    # run again: what the killed export left is removed, the result is an uninterrupted one's
    torch.manual_seed(1)
    model = build_model(config["model"], dm.n_users, dm.n_items)
    export_model(model, config, dm.data, dm.fingerprint, out, rows=9, onnx=False)
    assert siblings(out) == []
    assert_same_artifact(out, refs["new"])


def test_leftovers_never_enter_the_new_manifest(setup, tmp_path):
    """A file an earlier export left (scorer.onnx of an export with onnx=true) goes with the
    previous artifact; the user's own files in the folder stop the export instead of going."""
    root, config, dm, refs = setup
    out = tmp_path / "art"
    shutil.copytree(refs["old"], out)
    (out / "scorer.onnx").write_bytes(b"from an earlier export with onnx=true")
    (out / "segments").mkdir()
    (out / "segments" / "segments.csv").write_text("user,segment\n")
    torch.manual_seed(1)
    model = build_model(config["model"], dm.n_users, dm.n_items)
    args = (model, config, dm.data, dm.fingerprint, out)
    with pytest.raises(ConfigError, match=r"holds segments/ besides an artifact"):
        export_model(*args, rows=9, onnx=False)
    assert (out / "segments" / "segments.csv").is_file() and siblings(out) == []
    shutil.rmtree(out / "segments")
    export_model(*args, rows=9, onnx=False)
    meta = read_artifact(out)[0]
    assert "scorer.onnx" not in meta["files"] and not (out / "scorer.onnx").exists()
    assert_same_artifact(out, refs["new"])


def test_out_must_be_empty_an_artifact_or_absent(setup, tmp_path, monkeypatch):
    root, config, dm, refs = setup
    model = build_model(config["model"], dm.n_users, dm.n_items)
    args = (model, config, dm.data, dm.fingerprint)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("...")
    with pytest.raises(ConfigError, match="exists and is not an artifact directory"):
        export_model(*args, busy, rows=9, onnx=False)
    assert [p.name for p in busy.iterdir()] == ["thesis.tex"] and siblings(busy) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        export_model(*args, afile, rows=9, onnx=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(*args, empty, rows=9, onnx=False)
    before = {p.name: p.read_bytes() for p in empty.iterdir()}
    # an export failing half-way (weights written, then an error) changes nothing, leaves nothing
    with monkeypatch.context() as m:
        m.setattr("recsys.serving.export.embeddings", lambda model: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            export_model(*args, empty, rows=9, onnx=False)
    assert {p.name: p.read_bytes() for p in empty.iterdir()} == before
    assert siblings(empty) == []


def test_stale_folders_of_live_processes_stay(tmp_path):
    out = tmp_path / "art"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead_pid, live.pid):
            (tmp_path / f".art.export-{pid}").mkdir()
            (tmp_path / f".art.export-{pid}" / "weights.pt").write_bytes(b"partial")
        (tmp_path / f".art.replaced-{dead_pid}").mkdir()
        (tmp_path / ".art.export-notapid").mkdir()  # not ours: untouched
        (tmp_path / ".other.export-1").mkdir()  # another artifact's: untouched
        removed = remove_stale_exports(out)
        assert sorted(p.name for p in removed) == [
            f".art.export-{dead_pid}",
            f".art.replaced-{dead_pid}",
        ]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f".art.export-{live.pid}", ".art.export-notapid", ".other.export-1"]
        )
    finally:
        live.kill()
        live.wait()


def test_signed_export_and_unfinished_runs(tmp_path, monkeypatch):
    """recsys-export signs with the key set; a run whose manifest does not say finished is
    refused unless allow_unfinished."""
    run = tmp_path / "run"
    train(compose_config("train", DATA + FAST_TRAINER + ["trainer.max_epochs=1"], run))
    monkeypatch.setenv(KEY_ENV, "secret")
    art = export(run, tmp_path / "art", onnx=False)
    assert read_artifact(art)[1] == "verified"
    assert json.loads((art / SIGNATURE).read_text())["hmac_sha256"]
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="failed", reason="RuntimeError: out of memory")
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is failed .*allow_unfinished=true"):
        export(run, tmp_path / "art2", onnx=False)
    assert not (tmp_path / "art2").exists()
    art2 = export(run, tmp_path / "art2", onnx=False, allow_unfinished=True)
    assert read_artifact(art2)[1] == "verified"
    w, w2 = weights(art), weights(art2)
    assert all(torch.equal(w[k], w2[k]) for k in w)


# -- kills of the real command at random times ------------------------------------------------


@pytest.mark.slow
def test_export_killed_at_random_times(tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", DATA + FAST_TRAINER + ["trainer.max_epochs=1"], run))
    script = Path(sys.executable).parent / "recsys-export"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "recsys.cli.export"]
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"OMP_NUM_THREADS": "1"}

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            cmd + [f"run={run}", f"out={out}", "onnx=false"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )

    t0 = time.monotonic()
    ref = start(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    full = time.monotonic() - t0
    out = tmp_path / "art"
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        proc = start(out)
        try:  # most of a run is start-up (imports): the kills aim at its later part
            proc.wait(timeout=rng.uniform(0.5, 1.0) * full)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
        if out.exists():  # whatever the moment: a complete artifact equal to the reference
            read_artifact(out)
            assert_same_artifact(out, tmp_path / "ref")
    assert kills >= 2, "the trials did not interrupt the export"
    proc = start(out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert siblings(out) == [], "a temporary folder outlived the next export"
    assert_same_artifact(out, tmp_path / "ref")
