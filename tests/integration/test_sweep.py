"""Sweeps from the CLI: parallel runs (joblib), failures that do not stop the others, one
TensorBoard root with HPARAMS, the run manifest, recsys-compare on the result, and the launcher
and Optuna configs composing (SLURM without SLURM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.cli.compare import main as compare_main

pytest.importorskip(
    "hydra_plugins.hydra_joblib_launcher", reason="needs the sweep extra: pip install -e '.[sweep]'"
)

TINY = [
    "data.n_users=120",
    "data.n_items=60",
    "data.mean_length=12",
    "data.n_groups=3",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "eval.baseline=null",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """model=mf,pop × seed=1,2 in parallel, plus seed=oops: two runs that fail on a bad value."""
    out = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "RECSYS_SWEEP_JOBS": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            "-m",
            "hydra/launcher=parallel",
            "model=mf,pop",
            "seed=1,2,oops",
            *TINY,
            f"hydra.sweep.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out,
    )
    return out, proc


def _runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/metrics.json"))


@pytest.mark.slow
def test_failed_runs_are_reported_and_the_others_complete(sweep):
    out, proc = sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 run(s) of the sweep failed" in proc.stderr
    failed = [json.loads(p.read_text()) for p in sorted((out / "failures").glob("*.json"))]
    assert len(failed) == 2
    for f in failed:
        assert "seed=oops" in f["overrides"] and "seed must be an integer" in f["error"]
    assert {tuple(sorted(o for o in f["overrides"] if o.startswith("model="))) for f in failed} == {
        ("model=mf",),
        ("model=pop",),
    }
    assert len(_runs(out)) == 4  # the four valid runs finished


@pytest.mark.slow
def test_manifest_records_the_run(sweep):
    out, _ = sweep
    splits = set()
    for run in _runs(out):
        m = json.loads((run / "manifest.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "finished" and m["start_time"] <= m["end_time"]
        assert m["data"]["fingerprint"] == metrics["data"]["fingerprint"]
        assert m["seed"] == m["config"]["seed"] in (1, 2)
        assert m["config"]["model"]["_target_"] == metrics["model"]
        assert m["device"] == "cpu"
        assert {"python", "torch", "pytorch-lightning", "hydra-core", "numpy", "pandas"} <= set(
            m["versions"]
        )
        assert "commit" in (m["git"] or {"commit": None})
        splits.add(m["data"]["split_fingerprint"])
    # leave-one-out does not depend on the seed: all four runs saw the same prepared data
    assert len(splits) == 1 and len(splits.pop()) == 16


@pytest.mark.slow
def test_one_tensorboard_root_with_named_runs_and_hparams(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    out, _ = sweep
    runs = sorted(p for p in (out / "tensorboard").iterdir() if p.is_dir())
    names = [p.name for p in runs]
    assert len(runs) == 4, names
    for model in ("mf", "popularity"):
        for seed in (1, 2):
            assert any(f"-{model},seed={seed}" in n for n in names), names
    for run in runs:
        ea = EventAccumulator(str(run))
        ea.Reload()
        scalars = set(ea.Tags()["scalars"])
        assert {"final/val/ndcg@10", "final/test/ndcg@10", "test/ndcg@10"} <= scalars, scalars
        if "-mf," in run.name:
            assert {"train/loss", "val/ndcg@10"} <= scalars
        content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = HParamsPluginData.FromString(content).session_start_info.hparams
        assert hp["seed"].number_value in (1, 2)
        assert hp["model"].string_value == run.name.split("-")[1].split(",")[0]
        if "-mf," in run.name:
            assert hp["model.embedding_size"].number_value == 64
            assert "optim.lr" in hp


@pytest.mark.slow
def test_compare_on_the_sweep(sweep, tmp_path, capsys):
    out, _ = sweep
    compare_main([str(out), "--out", str(tmp_path), "--metrics", "test/ndcg@10,test/hit@10"])
    printed = capsys.readouterr().out
    md = (tmp_path / "compare.md").read_text()
    assert md in printed
    main_table = md.split("\n\n")[0]  # the per-group tables follow
    rows = [
        line
        for line in main_table.splitlines()
        if line.startswith("| ") and ("mf" in line or "popularity" in line)
    ]
    assert len(rows) == 2 and all("| 2 |" in r for r in rows)  # two seeds per configuration
    assert "failed run skipped" in md
    mf = [
        json.loads((r / "metrics.json").read_text())["test"]["ndcg@10"]
        for r in _runs(out)
        if json.loads((r / "manifest.json").read_text())["config"]["model"]["_target_"].endswith(
            "MF"
        )
    ]
    assert f"{sum(mf) / 2:.4f}" in md  # the mean over the two seeds
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "compare.csv").read_text().startswith("label,n_seeds")


def _compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_is_valid_without_slurm():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose_hydra(["hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min > 0 and launcher.gpus_per_node >= 0
    from hydra.utils import get_class

    assert get_class(launcher._target_) is not None  # the plugin class imports without SLURM


SEARCHES = sorted(p.stem for p in Path(CONFIG_DIR, "hparams_search").glob("*_optuna.yaml"))


@pytest.mark.parametrize("name", SEARCHES)
def test_optuna_search_spaces_name_real_keys(name):
    pytest.importorskip("optuna", reason="needs the sweep extra: pip install -e '.[sweep]'")
    from hydra.utils import get_class

    from hydra_plugins.recsys_optuna_sweeper.space import search_space

    cfg = _compose_hydra([f"hparams_search={name}"])
    assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.hydra.sweeper.direction == cfg.eval.mode == "max"  # direction: ${eval.mode}
    assert OmegaConf.to_container(cfg, resolve=False)["optimized_metric"] == "${eval.monitor}"
    assert cfg.hydra.sweeper.sampler.seed is not None and cfg.hydra.sweeper.pruner is not None
    params = cfg.hydra.sweeper.params
    assert params
    for key in params:
        node = cfg
        for part in key.split("."):
            assert part in node, f"{name}: {key} is not a key of the composed config"
            node = node[part]
    space, fixed = search_space(OmegaConf.to_container(params), [])
    assert [d.name for d in space] == list(params) and not fixed  # each one an Optuna distribution
