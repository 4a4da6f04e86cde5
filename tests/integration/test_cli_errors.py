"""Bad input at the command line: one clear line, a non-zero exit, nothing that looks finished."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli import CONFIG_DIR
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
        ("seed=-1", "seed must be in [0, 2**32), got -1"),
        ("seed=4294967296", "seed must be in [0, 2**32), got 4294967296"),
        ("eval.monitor='val/ndcg@5'", "eval.monitor='val/ndcg@5' is not a metric this run"),
        ("eval.metrics=[recall]", "eval.monitor='val/ndcg@10' is not a metric this run"),
        ("callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.monitor="),
        ("eval.mode=maximum", "eval.mode must be max or min, got 'maximum'"),
        ("optim.lr=0", "optim.lr must be a positive number, got 0"),
        ("+optim.momentum=0.9", "optim.momentum is not an argument of torch.optim.Adam"),
        ("optim.weight_decay=-1", "optim (torch.optim.Adam): Invalid weight_decay value: -1"),
        ("optim._target_=torch.optim.Nope", "optim._target_: cannot import 'torch.optim.Nope'"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch must be null"),
        ("trainer.precision=bogus", "trainer: Precision 'bogus' is invalid"),
        ("+trainer.bogus=1", "trainer: Trainer.__init__() got an unexpected keyword"),
        ("eval=rating", "eval.task=rating needs a dataset with ratings"),
    ],
)
def test_invalid_values_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        train(compose_config("train", TINY + [override], tmp_path))
    assert str(err.value).startswith(message)
    assert_nothing_finished(tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # no epoch was trained


# data that cannot be read: a config-alone error must be reported before the data is touched
MISSING_DATA = ["data=csv", "data.path=no/such/log.csv", "data.download=false"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seed=4294967296"], "error: seed must be in [0, 2**32), got 4294967296"),
        (
            ["eval.monitor='val/ndcg@5'"],
            "error: eval.monitor='val/ndcg@5' is not a metric this run reports",
        ),
        (["optim.lr=0"], "error: optim.lr must be a positive number, got 0"),
    ],
    ids=["seed", "monitor", "lr"],
)
def test_config_errors_come_first_in_one_line(tmp_path, overrides, message):
    """As a user runs it: one line, exit 2, no traceback, before the (missing) data is read and
    before any epoch (no checkpoint, no manifest)."""
    proc = run("recsys.cli.train", MISSING_DATA + overrides, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr and "no/such/log.csv" not in proc.stderr
    assert_nothing_finished(tmp_path)
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run("recsys.cli.train", MISSING_DATA, blocker / "run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: hydra.run.dir: cannot write the run directory {blocker / 'run'} (Not a directory)"
    )
    assert "Traceback" not in proc.stderr
    # the Python API says the same of paths.output_dir
    with pytest.raises(ConfigError, match=r"^paths.output_dir: cannot write the run directory"):
        train(compose_config("train", TINY, blocker / "run"))


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


@pytest.mark.slow
def test_shipped_configs_pass_the_config_checks():
    """The checks made before any data refuse no shipped setup (a monitor on ``epoch``, rating
    metrics, each optimizer's own arguments): every experiment, optimizer, evaluation and search
    space (a model config sets none of what they check)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from recsys.training.checks import validate_config

    groups = ("experiment", "optim", "eval", "hparams_search")
    shipped = [f"{g}={p.stem}" for g in groups for p in (Path(CONFIG_DIR) / g).glob("*.yaml")]
    assert len(shipped) > 20
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for override in sorted(shipped):
            cfg = compose("train", [override, "paths.output_dir=unused"])
            try:
                validate_config(OmegaConf.to_container(cfg, resolve=True))
            except ConfigError as e:
                raise AssertionError(f"{override}: {e}") from None
