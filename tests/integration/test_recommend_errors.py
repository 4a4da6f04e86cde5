"""recsys-recommend given bad input, run as a user runs it (the installed command, a subprocess):
exit status 2, one ``error:`` line naming what is wrong and where (option, file, line, key), no
traceback, and no finished-looking output left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recsys.data.datamodule import RecDataModule
from recsys.errors import CheckpointError
from recsys.models.base import build_model
from recsys.serving.artifact import (
    KEY_ENV,
    MANIFEST,
    SIGNATURE,
    VERSION,
    load,
    read_artifact,
    signature_record,
)
from recsys.serving.export import export_model
from tests.conftest import compose_config

DATA = ["data.n_users=120", "data.n_items=60", "data.mean_length=12", "data.n_groups=3"]
BIN = Path(sys.executable).parent


def recommend_cmd() -> list[str]:
    script = BIN / "recsys-recommend"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "recsys.cli.recommend"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """An MF artifact (random init) without ONNX, unsigned."""
    root = tmp_path_factory.mktemp("recommend")
    config = OmegaConf.to_container(
        compose_config("train", DATA + ["model=mf"], root), resolve=True
    )
    dm = RecDataModule(config["data"], seed=int(config["seed"]))
    dm.setup()
    torch.manual_seed(0)
    model = build_model(config["model"], dm.n_users, dm.n_items)
    os.environ.pop(KEY_ENV, None)
    return export_model(model, config, dm.data, dm.fingerprint, root / "art", rows=9, onnx=False)


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    return subprocess.run(
        recommend_cmd() + args,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**environ, "OMP_NUM_THREADS": "1", **env},
    )


def assert_one_line(proc: subprocess.CompletedProcess, *named: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def assert_nothing_written(folder: Path, name: str = "recs.csv") -> None:
    """Neither the output nor a temporary file of it."""
    if folder.is_dir():
        assert not [p.name for p in folder.iterdir() if name in p.name]


def users_file(tmp_path: Path, content: bytes, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# (case id, arguments after the artifact, what the line must name); {tmp} is the test's folder
OPTION_CASES = [
    ("batch-size 0", ["--input", "{users}", "--batch-size", "0"], ["--batch-size", "got 0"]),
    ("batch-size -1", ["--input", "{users}", "--batch-size", "-1"], ["--batch-size", "got -1"]),
    ("k 0", ["--user", "1", "-k", "0"], ["-k must be a positive integer, got 0"]),
    ("k not an int", ["--user", "1", "-k", "ten"], ["argument -k", "'ten'"]),
    ("unknown backend", ["--user", "1", "--backend", "pickle"], ["argument --backend"]),
    ("two inputs", ["--user", "1", "--items", "1,2"], ["not allowed with argument"]),
    ("bad trust", ["--user", "1", "--trust", "not a package"], ["trust", "'not a package'"]),
    ("empty --items", ["--items", " , "], ["--items: give at least one item id"]),
    ("unknown user", ["--user", "no-such-user"], ["unknown user id(s): no-such-user"]),
    ("no onnx", ["--user", "1", "--backend", "onnx"], ["no onnx scorer", "use backend='eager'"]),
    ("input missing", ["--input", "{tmp}/nope.csv"], ["--input: ", "nope.csv: no such file"]),
    ("input folder", ["--input", "{tmp}"], ["--input: ", "is a folder, not a file"]),
    ("output folder", ["--input", "{users}", "--output", "{tmp}"], ["--output: ", "is a folder"]),
    (
        "output under a file",
        ["--input", "{users}", "--output", "{users}/recs.csv"],
        ["--output: ", "users.csv is a file"],
    ),
]


@pytest.mark.parametrize(
    "args, named", [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES]
)
def test_bad_options(artifact, tmp_path, args, named):
    users = users_file(tmp_path, b"user\n1\n2\n3\n")
    fill = {"tmp": str(tmp_path), "users": str(users)}
    args = [a.format(**fill) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out" / "recs.csv")]
    proc = run([str(artifact), *args], tmp_path)
    assert_one_line(proc, *[n.format(**fill) for n in named])
    assert_nothing_written(tmp_path / "out")


INPUT_CASES = [
    ("binary", b"user\n1\n\x89PNG\r\n\x1a\n\xff\xfe\x00", ["line 3: not UTF-8 text (byte 0x89)"]),
    ("latin-1", "user\n1\nJosé\n".encode("latin-1"), ["line 3: not UTF-8 text"]),
    ("NUL byte", b"user\n1\n2\x003\n", ["line 3", "NUL"]),
    ("empty", b"", ["is empty"]),
    ("header only", b"user\n", ["holds a header but no user ids"]),
    ("no user column", b"id,name\n1,a\n", ["several columns and none is named 'user'"]),
]


@pytest.mark.parametrize(
    "content, named", [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES]
)
def test_bad_input_files(artifact, tmp_path, content, named):
    users = users_file(tmp_path, content)
    out = tmp_path / "out" / "recs.csv"
    proc = run([str(artifact), "--input", str(users), "--output", str(out)], tmp_path)
    assert_one_line(proc, f"--input: {users}", *named)
    assert_nothing_written(out.parent)


def rehashed(src: Path, dest: Path, raw: bytes) -> Path:
    """A copy of ``src`` whose artifact.json is ``raw``, with its digest redone (so the
    structural check, not the digest, answers)."""
    shutil.copytree(src, dest)
    (dest / MANIFEST).write_bytes(raw)
    (dest / SIGNATURE).write_bytes(signature_record(raw, None))
    return dest


def _edit(fn):
    def make(meta: dict) -> bytes:
        fn(meta)
        return (json.dumps(meta, indent=2) + "\n").encode()

    return make


MANIFEST_CASES = {
    "truncated": (lambda meta: json.dumps(meta).encode()[:200], "corrupted or truncated"),
    "not an object": (lambda meta: b"[1, 2]\n", "not a recsys artifact manifest"),
    "num_users a string": (_edit(lambda m: m.update(num_users="many")), "num_users must be"),
    "num_items negative": (_edit(lambda m: m.update(num_items=-3)), "num_items must be"),
    "version a string": (_edit(lambda m: m.update(version="2")), "version must be"),
    "newer version": (_edit(lambda m: m.update(version=99)), "artifact version 99 is newer"),
    "scorer missing": (_edit(lambda m: m.pop("scorer")), "scorer is missing"),
    "unknown key": (_edit(lambda m: m.update(loader="x")), "unknown key 'loader'"),
    "model not a mapping": (_edit(lambda m: m.update(model="mf")), "model must be a mapping"),
    "no _target_": (_edit(lambda m: m["model"].pop("_target_")), "model._target_ must be"),
    "file outside": (
        _edit(lambda m: m["files"].update({"../escape.pt": m["files"]["weights.pt"]})),
        "files: '../escape.pt' is not a file of an artifact",
    ),
    "file in a subfolder": (
        _edit(lambda m: m["files"].update({"sub/weights.pt": m["files"]["weights.pt"]})),
        "files: 'sub/weights.pt' is not a file",
    ),
    "unknown file": (
        _edit(lambda m: m["files"].update({"hook.py": m["files"]["weights.pt"]})),
        "files: 'hook.py' is not a file",
    ),
    "weights missing": (
        _edit(lambda m: m["files"].pop("weights.pt")),
        "files: weights.pt is missing",
    ),
    "bad checksum": (
        _edit(lambda m: m["files"]["ids.npz"].update(sha256="xyz")),
        "files.ids.npz.sha256 must be 64 lowercase hex digits",
    ),
    "scorer elsewhere": (
        _edit(lambda m: m["scorer"].update(torchscript="../../x.ts")),
        "scorer.torchscript must be 'scorer.ts' or null",
    ),
    "rows a float": (_edit(lambda m: m["scorer"].update(rows=8.5)), "scorer.rows must be"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CASES))
def test_malformed_manifest_is_one_line(artifact, tmp_path, name):
    """In-process: each malformed artifact.json gives one CheckpointError line naming the file
    and the key."""
    make, message = MANIFEST_CASES[name]
    meta = json.loads((artifact / MANIFEST).read_text())
    art = rehashed(artifact, tmp_path / "art", make(meta))
    with pytest.raises(CheckpointError) as e:
        read_artifact(art)
    assert str(e.value).startswith(f"{art / MANIFEST}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["truncated", "file outside", "num_users a string"])
def test_malformed_manifest_at_the_command_line(artifact, tmp_path, name):
    make, message = MANIFEST_CASES[name]
    meta = json.loads((artifact / MANIFEST).read_text())
    art = rehashed(artifact, tmp_path / "art", make(meta))
    out = tmp_path / "out" / "recs.csv"
    proc = run([str(art), "--user", "1", "--output", str(out)], tmp_path)
    assert_one_line(proc, str(art / MANIFEST), message)
    assert_nothing_written(out.parent)


@pytest.mark.parametrize(
    "setup, named",
    [
        (lambda art, tmp: tmp / "missing", ["no such artifact directory"]),
        (lambda art, tmp: users_file(tmp, b"x", "file"), ["not a directory"]),
        (lambda art, tmp: tmp, ["not an artifact directory (no artifact.json"]),
    ],
    ids=["missing", "a file", "not an artifact"],
)
def test_bad_artifact_path(artifact, tmp_path, setup, named):
    proc = run([str(setup(artifact, tmp_path)), "--user", "1"], tmp_path)
    assert_one_line(proc, *named)


def test_a_closed_pipe_is_no_error(artifact, tmp_path):
    """``recsys-recommend ... | head -1``: the reader leaves early; no traceback, exit 0."""
    users = users_file(
        tmp_path, ("user\n" + "\n".join(str(u) for u in range(1, 121)) + "\n").encode()
    )
    proc = subprocess.Popen(
        recommend_cmd() + [str(artifact), "--input", str(users), "-k", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline().startswith(b"user ")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_output_is_written_whole(artifact, tmp_path):
    """A good run: one line on stderr about the signature, the CSV complete, no temporary file."""
    users = users_file(tmp_path, b"user\n1\n2\n")
    out = tmp_path / "out" / "recs.csv"
    proc = run([str(artifact), "--input", str(users), "--output", str(out), "-k", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == (
        f"artifact {artifact}: unsigned (checksums verified; set {KEY_ENV} to require a signature)"
    )
    rows = out.read_text().splitlines()
    assert rows[0] == "user,rank,item,score" and len(rows) == 1 + 2 * 3
    assert [p.name for p in out.parent.iterdir()] == ["recs.csv"]


def test_a_newer_format_says_so(artifact, tmp_path):
    """An artifact from a newer recsys (whose digest file this one may not read) is refused as
    newer, not as corrupted."""
    meta = json.loads((artifact / MANIFEST).read_text())
    newer = VERSION + 1
    art = rehashed(artifact, tmp_path / "art", _edit(lambda m: m.update(version=newer))(meta))
    (art / SIGNATURE).write_text(f'{{"format": "recsys-artifact-digest-{newer}"}}\n')
    with pytest.raises(CheckpointError, match=f"artifact version {newer} is newer than this"):
        read_artifact(art)


@pytest.mark.parametrize(
    "size, message",
    [
        (10**12, "artifact.json: model describes 686645507.8 MiB of weights, weights.pt holds"),
        (9, "weights.pt: weights not loadable into recsys.models.mf.MF (Error(s) in loading"),
        ("eight", "artifact.json: model (recsys.models.mf.MF): "),
    ],
    ids=["huge", "another size", "a string"],
)
def test_model_that_does_not_fit_its_weights(artifact, tmp_path, size, message):
    """Hyper-parameters that do not describe the shipped weights: one line, and no attempt to
    allocate what they ask for."""
    meta = json.loads((artifact / MANIFEST).read_text())
    meta["model"]["embedding_size"] = size
    art = rehashed(artifact, tmp_path / "art", _edit(lambda m: None)(meta))
    with pytest.raises(CheckpointError) as e:
        load(art)
    assert message in str(e.value) and "\n" not in str(e.value)
