"""DDP (trainer=ddp) on 2 CPU processes with gloo: training runs, and evaluation equals one process.

One subprocess trains MF with ``trainer=ddp`` (Lightning starts the second rank), then evaluates
the best checkpoint under DDP, each rank scoring a disjoint set of users. The test evaluates the
same checkpoint in a single process and requires identical metrics and per-user values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recsys.training.runs import (
    datamodule_from_config,
    evaluate,
    load_checkpoint,
    module_from_checkpoint,
)

pytestmark = pytest.mark.slow

# 301 users: the ranks hold 151 and 150 users, so the gather must handle unequal lengths;
# eval.batch_size=64 gives several chunks per rank.
OVERRIDES = [
    "data.n_users=301",
    "data.n_items=120",
    "data.mean_length=25",
    "data.n_groups=4",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy.process_group_backend=gloo",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=2",
    "eval.batch_size=64",
    "optim.lr=0.01",
    "seed=3",
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import numpy as np
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from pytorch_lightning.strategies import DDPStrategy

    from recsys.cli import CONFIG_DIR
    from recsys.training.runs import datamodule_from_config, load_checkpoint, module_from_checkpoint
    from recsys.training.train import train

    out = Path(sys.argv[1])
    overrides = json.loads(sys.argv[2])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    train(cfg)  # DDP training; Lightning re-runs this script as rank 1

    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    module = module_from_checkpoint(ckpt)
    dm = datamodule_from_config(ckpt["hyper_parameters"]["config"])
    dm.configure_for(module.model)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    if trainer.global_rank == 0:
        (out / "ddp_eval.json").write_text(json.dumps(module.results))
        np.savez(out / "ddp_per_user_test.npz", **module.per_user["test"])
    """
)


def test_ddp_training_and_exact_evaluation(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), json.dumps(OVERRIDES)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((out / "metrics.json").read_text())["timing"]["epochs"] == 2

    ddp = json.loads((out / "ddp_eval.json").read_text())
    ddp_users = dict(np.load(out / "ddp_per_user_test.npz"))

    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    module = module_from_checkpoint(ckpt)
    dm = datamodule_from_config(ckpt["hyper_parameters"]["config"])
    dm.configure_for(module.model)
    val, _ = evaluate(module, dm, "val", "cpu")
    test, per_user = evaluate(module, dm, "test", "cpu")

    # every evaluated user exactly once, in the single-process order
    assert len(np.unique(ddp_users["user"])) == len(ddp_users["user"]) == 301
    np.testing.assert_array_equal(ddp_users["user"], per_user["user"])
    for key, values in per_user.items():
        np.testing.assert_array_equal(ddp_users[key], values, err_msg=key)
    assert ddp["val"] == val
    assert ddp["test"] == test
    assert test["ndcg@10"] > 0  # a real evaluation, not an empty one


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    from recsys.data.datamodule import RankShard

    class Loader:  # 7 batches; batch i is the tensor [i]
        def __init__(self):
            self.sampler = object()

        def __len__(self):
            return 7

        def __iter__(self):
            return iter(range(7))

    shards = [list(RankShard(Loader(), r, 3)) for r in range(3)]
    assert shards == [[0, 3], [1, 4], [2, 5]]  # equal step counts; batch 6 waits for a reshuffle
    assert len(RankShard(Loader(), 0, 3)) == 2
    tiny = [list(RankShard(Loader(), r, 10)) for r in range(10)]
    assert all(len(s) == 1 for s in tiny)  # more ranks than batches: one step each
