"""Files from elsewhere, tried as an attacker would: none of them gets to run its own code.

Each crafted file names code that would create a marker file if it ran: a package on the
``PYTHONPATH`` of the command whose mere import writes the marker (so the test shows the module
is never even imported), ``torch.hub.load`` pointed at a local ``hubconf.py`` that writes it, or a
TorchScript scorer that writes it through ``torch.from_file``. The real commands run as a user
would run them (a subprocess): the default paths refuse with exit status 2 and one line naming the
file and the key, and the marker never appears. Where the user opts in (``trust=[pkg]``,
``$RECSYS_TRUSTED_PACKAGES``, ``--backend torchscript``) the marker does appear: the tests can
fail.
"""

from __future__ import annotations

import contextlib
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

from recsys.errors import CheckpointError
from recsys.serving.artifact import (
    KEY_ENV,
    MANIFEST,
    NOT_CHECKED,
    SIGNATURE,
    UNSIGNED,
    VERIFIED,
    load,
    read_artifact,
    signature_record,
)
from recsys.serving.export import export
from recsys.training.runs import open_run
from recsys.training.train import train
from recsys.trust import ENV as TRUST_ENV
from tests.conftest import FAST_TRAINER, compose_config

DATA = ["data.n_users=120", "data.n_items=60", "data.mean_length=12", "data.n_groups=3"]
PKG = "markerpkg"  # the attacker's package: importing it writes $RECSYS_TEST_MARKER
MARKER_ENV = "RECSYS_TEST_MARKER"
PACKAGE_CODE = """
import os, pathlib
pathlib.Path(os.environ["RECSYS_TEST_MARKER"]).write_text("imported")

class Model:  # what a crafted file names as a model or an optimizer
    def __init__(self, *args, **kwargs):
        pathlib.Path(os.environ["RECSYS_TEST_MARKER"]).write_text("called")

def load_data(*args, **kwargs):  # ... and as a data loader
    pathlib.Path(os.environ["RECSYS_TEST_MARKER"]).write_text("called")
"""
HUBCONF = """
import os, pathlib
pathlib.Path(os.environ["RECSYS_TEST_MARKER"]).write_text("hubconf imported")

def evil(*args, **kwargs):
    pathlib.Path(os.environ["RECSYS_TEST_MARKER"]).write_text("hub entry called")
"""
BIN = Path(sys.executable).parent


def command(name: str) -> list[str]:
    """The installed console script ``name`` (as a user runs it), else ``python -m``."""
    script = BIN / name
    module = "recsys.cli." + name.removeprefix("recsys-")
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


@pytest.fixture(scope="module")
def attacker(tmp_path_factory) -> Path:
    """A folder holding the attacker's package and a torch.hub ``hubconf.py``."""
    root = tmp_path_factory.mktemp("attacker")
    (root / PKG).mkdir()
    (root / PKG / "__init__.py").write_text(PACKAGE_CODE)
    (root / "hub").mkdir()
    (root / "hub" / "hubconf.py").write_text(HUBCONF)
    return root


@pytest.fixture
def marker(tmp_path, monkeypatch, attacker) -> Path:
    """Where the attacker's code would write; the package is importable in this process too."""
    path = tmp_path / "MARKER"
    monkeypatch.setenv(MARKER_ENV, str(path))
    monkeypatch.syspath_prepend(str(attacker))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    sys.modules.pop(PKG, None)
    yield path
    sys.modules.pop(PKG, None)


def env_for(marker: Path, attacker: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (TRUST_ENV, KEY_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(attacker), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env[MARKER_ENV] = str(marker)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run_cmd(name: str, args: list[str], env: dict[str, str], cwd: Path):
    return subprocess.run(
        command(name) + args, capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


def assert_refused(proc, *named: str) -> str:
    """Exit status 2, no traceback, and one ``error:`` line naming each of ``named``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


# -- (a) crafted checkpoints ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny finished run (MF-BPR, one epoch)."""
    run = tmp_path_factory.mktemp("security") / "run"
    cfg = compose_config(
        "train", DATA + FAST_TRAINER + ["trainer.max_epochs=1", "eval.baseline=null"], run
    )
    train(cfg)
    return run


# what each crafted checkpoint changes: (key named in the refusal, edit of hyper_parameters)
def _model(hp, target, **kw):
    hp["model"] = {"_target_": target, **kw}
    hp["config"]["model"] = dict(hp["model"])


def _optim(hp, target, **kw):
    hp["optim"] = {**hp["optim"], "_target_": target}
    hp["config"]["optim"] = dict(hp["optim"])


def _source(hp, target, **kw):
    hp["config"]["data"]["source"] = target


CRAFTS = {
    "model._target_": (_model, f"{PKG}.Model"),
    "optim._target_": (_optim, f"{PKG}.Model"),
    "data.source": (_source, f"{PKG}.load_data"),
}


def craft_run(run_dir: Path, dest: Path, key: str, target: str | None = None, **kw) -> Path:
    """A copy of ``run_dir`` whose best checkpoint names ``target`` at ``key``."""
    shutil.copytree(run_dir, dest)
    ckpt_path = dest / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    edit, default = CRAFTS[key]
    edit(ckpt["hyper_parameters"], target or default, **kw)
    torch.save(ckpt, ckpt_path)
    return dest


REFUSED = ("data.source", "model._target_", "optim._target_")  # refused when the run is opened
IMPORTED_ON_OPEN = ("data.source", "model._target_")  # what a trusted package runs on opening


@pytest.mark.parametrize("key", REFUSED)
def test_open_run_refuses_before_importing(run_dir, tmp_path, marker, key):
    """In-process, every consumer of a run goes through open_run: refused by name, the
    attacker's module not even imported."""
    run = craft_run(run_dir, tmp_path / "run", key)
    with pytest.raises(CheckpointError) as e:
        open_run(run)
    assert key in str(e.value) and str(run / "checkpoints" / "best.ckpt") in str(e.value)
    assert PKG not in sys.modules
    assert not marker.exists()


def test_a_trusted_optimizer_is_imported_only_where_it_is_built(run_dir, tmp_path, marker):
    """optim._target_ is imported only when an optimizer is built (training): with the package
    trusted, opening the run imports nothing, building the optimizer does (the test can fail)."""
    run = craft_run(run_dir, tmp_path / "run", "optim._target_")
    opened = open_run(run, trust=[PKG])
    assert PKG not in sys.modules and not marker.exists()
    with contextlib.suppress(Exception):  # what the package does next does not matter
        opened.module.configure_optimizers()
    assert marker.exists()


def test_open_run_refuses_a_foreign_optimizer_by_name(run_dir, tmp_path, marker):
    """A file naming foreign code is refused as soon as it is opened (as model and source
    are), even where that code would never be imported."""
    run = craft_run(run_dir, tmp_path / "run", "optim._target_")
    with pytest.raises(CheckpointError, match="optim._target_"):
        open_run(run)


def test_torch_hub_load_is_refused(run_dir, tmp_path, marker, attacker):
    """The issue's example: model._target_ = torch.hub.load on a local hubconf.py."""
    hub = dict(repo_or_dir=str(attacker / "hub"), model="evil", source="local")
    run = craft_run(run_dir, tmp_path / "run", "model._target_", "torch.hub.load", **hub)
    with pytest.raises(CheckpointError, match=r"model._target_='torch.hub.load' is not"):
        open_run(run)
    assert not marker.exists()
    torch.hub.load(**hub)  # what would have run: the marker appears, the test can fail
    assert marker.exists()


# every command opens a run through open_run (each key is refused there, in-process, above): as
# subprocesses, each key once, each command once
COMMANDS = {
    "recsys-eval": lambda run, out: [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                                     f"hydra.run.dir={out}"],
    "recsys-export": lambda run, out: [f"run={run}", f"out={out}"],
    "recsys-segment": lambda run, out: [f"run={run}", f"out={out}", "plot=false"],
}  # fmt: skip
CASES = [
    ("model._target_", "recsys-eval"),
    ("data.source", "recsys-segment"),
    pytest.param("optim._target_", "recsys-export", marks=pytest.mark.slow),
]


def assert_no_output(cmd: str, out: Path) -> None:
    finished = {"recsys-eval": "metrics.json", "recsys-export": MANIFEST,
                "recsys-segment": "segments.csv"}[cmd]  # fmt: skip
    assert not (out / finished).exists(), f"{cmd} left {out / finished}"


@pytest.mark.parametrize("key, cmd", CASES)
def test_commands_never_run_a_crafted_checkpoint(run_dir, tmp_path, marker, attacker, key, cmd):
    """A crafted model, optimizer or data source: exit 2, one line, nothing finished-looking."""
    run = craft_run(run_dir, tmp_path / "run", key)
    out = tmp_path / "out"
    proc = run_cmd(cmd, COMMANDS[cmd](run, out), env_for(marker, attacker), tmp_path)
    assert_refused(proc, key, str(run / "checkpoints" / "best.ckpt"), "not")
    assert_no_output(cmd, out)
    assert not marker.exists(), f"{cmd} ran the checkpoint's {key}"


@pytest.mark.parametrize("key", IMPORTED_ON_OPEN)
def test_the_user_can_opt_in_in_process(run_dir, tmp_path, marker, key):
    """trust=[pkg] lets the checkpoint name the package: it is imported (the marker appears),
    which shows that the tests above can fail."""
    run = craft_run(run_dir, tmp_path / "run", key)
    with contextlib.suppress(Exception):  # what the package does next does not matter
        open_run(run, trust=[PKG]).datamodule.setup()
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["option", "env"], ids=["trust=[pkg]", "RECSYS_TRUSTED_PACKAGES"])
def test_the_user_can_opt_in(run_dir, tmp_path, marker, attacker, how):
    """Naming the package at load time lets the checkpoint use it: its code runs (the model is
    then refused as no Recommender, but too late for the marker). Shows the tests above can fail."""
    run = craft_run(run_dir, tmp_path / "run", "model._target_")
    args = COMMANDS["recsys-eval"](run, tmp_path / "out")
    extra = {TRUST_ENV: PKG} if how == "env" else {}
    args += [f"trust=[{PKG}]"] if how == "option" else []
    proc = run_cmd("recsys-eval", args, env_for(marker, attacker, **extra), tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert marker.exists()


# -- (b) crafted artifact.json ----------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(run_dir, tmp_path_factory) -> Path:
    """The run exported, unsigned (TorchScript scorer included, no ONNX)."""
    os.environ.pop(KEY_ENV, None)
    return export(run_dir, tmp_path_factory.mktemp("artifact") / "art", onnx=False)


@pytest.fixture(scope="module")
def signed_artifact(run_dir, tmp_path_factory) -> Path:
    """The run exported with $RECSYS_ARTIFACT_KEY=secret."""
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "secret")
    try:
        return export(run_dir, tmp_path_factory.mktemp("signed") / "art", onnx=False)
    finally:
        mp.undo()


def rehash(art: Path, key: str | None = None, files: tuple[str, ...] = ()) -> None:
    """Redo the checksums of ``files`` in the manifest and the digest (signed with ``key``):
    what an attacker without the user's key can do."""
    meta = json.loads((art / MANIFEST).read_text())
    for name in files:
        data = (art / name).read_bytes()
        meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    raw = (json.dumps(meta, indent=2) + "\n").encode() if files else (art / MANIFEST).read_bytes()
    (art / MANIFEST).write_bytes(raw)
    (art / SIGNATURE).write_bytes(signature_record(raw, key.encode() if key else None))


def edit_manifest(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    meta = json.loads((dest / MANIFEST).read_text())
    edit(meta)
    (dest / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def evil_model(meta):
    meta["model"]["_target_"] = f"{PKG}.Model"


def recommend(art: Path, env: dict[str, str], cwd: Path, *args: str):
    return run_cmd("recsys-recommend", [str(art), "--user", "1", "-k", "3", *args], env, cwd)


def test_crafted_manifest_without_rehashing_is_refused(artifact, tmp_path, marker, attacker):
    art = edit_manifest(artifact, tmp_path / "art", evil_model)
    with pytest.raises(CheckpointError, match="manifest_sha256 does not match artifact.json"):
        load(art)
    proc = recommend(art, env_for(marker, attacker), tmp_path)
    assert_refused(proc, str(art / SIGNATURE), "manifest_sha256", MANIFEST)
    assert not marker.exists() and PKG not in sys.modules


def test_crafted_manifest_rehashed_is_refused_by_name(artifact, tmp_path, marker, attacker):
    """The digest redone (no key set: nothing can tell): the _target_ is refused before import."""
    art = edit_manifest(artifact, tmp_path / "art", evil_model)
    rehash(art)
    for backend in ("auto", "eager"):
        with pytest.raises(CheckpointError, match=r"model._target_='markerpkg.Model' is not"):
            load(art, backend=backend)
    assert PKG not in sys.modules and not marker.exists()
    proc = recommend(art, env_for(marker, attacker), tmp_path)
    assert_refused(proc, str(art / MANIFEST), "model._target_")
    assert not marker.exists()
    # the caller trusting the package lets it through: the marker appears
    proc = recommend(art, env_for(marker, attacker), tmp_path, "--trust", PKG)
    assert proc.returncode == 2 and marker.exists()


def test_crafted_manifest_resigned_with_another_key_is_refused(
    signed_artifact, tmp_path, marker, attacker
):
    art = edit_manifest(signed_artifact, tmp_path / "art", evil_model)
    rehash(art, key="the attacker's key")
    env = env_for(marker, attacker, **{KEY_ENV: "secret", TRUST_ENV: PKG})
    proc = recommend(art, env, tmp_path)  # even with the package trusted
    assert_refused(proc, str(art / SIGNATURE), "hmac_sha256 does not match", KEY_ENV)
    assert not marker.exists()


# -- (c) a crafted TorchScript scorer ---------------------------------------------------------

SENTINEL = 65.0  # the scores the crafted scorer returns (the byte it writes: "A")


class _Evil(torch.nn.Module):
    """A scorer of the artifact's signature that writes 4 bytes to ``path`` when it runs."""

    def __init__(self, path: str, num_items: int):
        super().__init__()
        self.path = path
        self.num_items = num_items

    def forward(self, users: torch.Tensor, items: torch.Tensor, offsets: torch.Tensor):
        t = torch.from_file(self.path, True, 4, dtype=torch.uint8)  # creates the file
        t.fill_(65)
        return torch.zeros(users.shape[0], self.num_items) + t[0].float()


def craft_scorer(src: Path, dest: Path, marker: Path, key: str | None = None) -> Path:
    shutil.copytree(src, dest)
    meta = json.loads((dest / MANIFEST).read_text())
    torch.jit.save(torch.jit.script(_Evil(str(marker), meta["num_items"])), str(dest / "scorer.ts"))
    assert not marker.exists()  # scripting runs nothing
    rehash(dest, key, files=("scorer.ts",))
    return dest


def test_crafted_torchscript_runs_only_when_asked_for(artifact, tmp_path, marker, attacker):
    art = craft_scorer(artifact, tmp_path / "art", marker)
    env = env_for(marker, attacker)
    want = load(artifact).recommend([1], k=3)[0]["items"]
    rec = load(art)  # the checksums match: only the default path protects here
    assert rec.backend == "eager" and rec.recommend([1], k=3)[0]["items"] == want
    proc = recommend(art, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:]] == [str(i) for i in want]
    assert not marker.exists(), "the default backend ran the artifact's TorchScript"
    # asked for by name, it runs: the marker appears and the scores are the sentinel
    proc = recommend(art, env, tmp_path, "--backend", "torchscript")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_bytes() == b"AAAA"
    assert {float(line.split()[2]) for line in proc.stdout.splitlines()[1:]} == {SENTINEL}


def test_crafted_torchscript_in_a_signed_artifact_is_refused(
    signed_artifact, tmp_path, marker, attacker
):
    art = craft_scorer(signed_artifact, tmp_path / "art", marker, key="not the user's key")
    env = env_for(marker, attacker, **{KEY_ENV: "secret"})
    proc = recommend(art, env, tmp_path, "--backend", "torchscript")
    assert_refused(proc, str(art / SIGNATURE), "hmac_sha256 does not match")
    assert not marker.exists()


# -- (d) tampering and accidents --------------------------------------------------------------


def _positions(name: str, size: int, rng: np.random.Generator) -> list[int]:
    """Every byte of the manifest and the digest; the first, last and 24 random ones of the
    other files (each covered by its checksum in the manifest)."""
    if name in (MANIFEST, SIGNATURE):
        return list(range(size))
    return sorted({0, size - 1, *rng.integers(0, size, 24).tolist()})


@pytest.mark.parametrize("key", ["secret", None], ids=["signed+key", "unsigned"])
def test_any_changed_byte_is_refused(artifact, signed_artifact, tmp_path, monkeypatch, key):
    """Every byte of the manifest and the digest, a sample of every other file's: changed, the
    artifact is refused (with a key: tampering; without: an accident, which the digest and the
    checksums catch)."""
    src = signed_artifact if key else artifact
    art = tmp_path / "art"
    shutil.copytree(src, art)
    if key:
        monkeypatch.setenv(KEY_ENV, key)
    assert read_artifact(art)[1] == (VERIFIED if key else UNSIGNED)
    rng = np.random.default_rng(0)
    names = sorted(p.name for p in art.iterdir())
    assert {MANIFEST, SIGNATURE, "weights.pt", "scorer.ts"} <= set(names)
    for name in names:
        path = art / name
        original = path.read_bytes()
        for pos in _positions(name, len(original), rng):
            for flip in (0x01, 0x80):
                data = bytearray(original)
                data[pos] ^= flip
                path.write_bytes(bytes(data))
                with pytest.raises(CheckpointError) as e:
                    read_artifact(art)
                assert name in str(e.value) or SIGNATURE in str(e.value), (name, pos, e.value)
        path.write_bytes(original)
    assert read_artifact(art)[1] == (VERIFIED if key else UNSIGNED)


def test_signature_states(artifact, signed_artifact, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert load(signed_artifact).signature == NOT_CHECKED
    assert load(artifact).signature == UNSIGNED
    monkeypatch.setenv(KEY_ENV, "secret")
    assert load(signed_artifact).signature == VERIFIED
    with pytest.raises(CheckpointError, match=f"unsigned and {KEY_ENV} is set"):
        load(artifact)
    monkeypatch.setenv(KEY_ENV, "another key")
    with pytest.raises(CheckpointError, match="hmac_sha256 does not match"):
        load(signed_artifact)
    # removing the digest, or claiming version 1 to do without one, does not get around a key
    art = tmp_path / "v1"
    edit_manifest(signed_artifact, art, lambda m: m.update(version=1))
    (art / SIGNATURE).unlink()
    with pytest.raises(CheckpointError, match=f"version 1 artifact is unsigned and {KEY_ENV}"):
        load(art)
    monkeypatch.delenv(KEY_ENV)
    assert load(art).signature == UNSIGNED  # a version-1 artifact without a key: loads unsigned
    v2 = tmp_path / "v2"
    shutil.copytree(artifact, v2)
    (v2 / SIGNATURE).unlink()
    with pytest.raises(CheckpointError, match="artifact.sig: missing"):
        load(v2)


def test_recommend_says_whether_it_verified_a_signature(
    signed_artifact, tmp_path, marker, attacker
):
    verified = recommend(
        signed_artifact, env_for(marker, attacker, **{KEY_ENV: "secret"}), tmp_path
    )
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert verified.stderr.strip() == f"artifact {signed_artifact}: signature verified " + (
        f"(HMAC-SHA256, key from {KEY_ENV})"
    )
    unchecked = recommend(signed_artifact, env_for(marker, attacker), tmp_path)
    assert unchecked.returncode == 0 and "signature not checked" in unchecked.stderr
    assert unchecked.stdout == verified.stdout
