"""Bad input at the command line: one clear line, a non-zero exit, nothing that looks finished."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.errors import ConfigError
from recsys.training.train import train
from tests.conftest import compose_config

TINY = [
    "data.n_users=200",
    "data.n_items=80",
    "data.n_groups=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def run(module: str, args: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_nothing_finished(run_dir: Path) -> None:
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.embedding_size=-4", "model.embedding_size must be an integer >= 1, got -4"),
        ("eval.topk=[]", "eval.topk must be a non-empty list"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("eval.batch_size=0", "eval.batch_size must be a positive integer, got 0"),
        ("eval.topk=[10,5000]", "eval.topk contains 5000, larger than the catalogue"),
    ],
)
def test_invalid_values_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        train(compose_config("train", TINY + [override], tmp_path))
    assert str(err.value).startswith(message)
    assert_nothing_finished(tmp_path)


@pytest.mark.slow
def test_cli_reports_one_line_and_exits_2(tmp_path):
    proc = run("recsys.cli.train", TINY + ["model.embedding_size=-4"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: model.embedding_size must be an integer >= 1, got -4"
    )
    assert "Traceback" not in proc.stderr
    assert_nothing_finished(tmp_path)


@pytest.mark.slow
def test_unknown_model_lists_the_options(tmp_path):
    proc = run("recsys.cli.train", ["model=no_such_model"], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'model/no_such_model'" in proc.stderr
    assert "Available options in 'model'" in proc.stderr and "mf" in proc.stderr
    assert_nothing_finished(tmp_path)


@pytest.mark.slow
def test_unknown_key_fails_in_struct_mode(tmp_path):
    proc = run("recsys.cli.train", ["model.embeding_size=8"], tmp_path)
    assert proc.returncode != 0
    assert "embeding_size" in proc.stderr
    assert_nothing_finished(tmp_path)


@pytest.mark.slow
def test_missing_and_corrupted_checkpoints(tmp_path):
    missing = tmp_path / "nope.ckpt"
    proc = run("recsys.cli.eval", [f"ckpt_path={missing}"], tmp_path / "a")
    assert proc.returncode == 2
    assert f"error: ckpt_path: no such checkpoint file: {missing}" in proc.stderr
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    proc = run("recsys.cli.eval", [f"ckpt_path={corrupt}"], tmp_path / "b")
    assert proc.returncode == 2
    assert f"error: ckpt_path: {corrupt} is not a readable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("recsys.cli.train", TINY + [f"ckpt_path={corrupt}"], tmp_path / "c")
    assert proc.returncode == 2 and "is not a readable checkpoint" in proc.stderr
    assert_nothing_finished(tmp_path / "c")
    assert not (tmp_path / "a" / "metrics.json").exists()


@pytest.mark.slow
def test_help_and_cfg_job():
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "model: " in out.stdout and "recsys-train" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli.train", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "_target_: recsys.models.mf.MF" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "engagement", "export", "segment"])
def test_help_lists_only_what_the_command_reads(command):
    """Hydra's help lists every config group of configs/; the other commands choose none of
    recsys-train's (model, experiment, trainer, ...), so their help does not offer them."""
    out = subprocess.run(
        [sys.executable, "-m", f"recsys.cli.{command}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and f"recsys-{command}:" in out.stdout
    assert "experiment:" not in out.stdout and "hparams_search:" not in out.stdout
