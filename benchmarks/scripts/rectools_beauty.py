"""RecTools 0.19 SASRec on our Amazon Beauty leave-one-out split: seconds per epoch and validation
NDCG@10 after each epoch, for the time-to-quality comparison with our SASRec
(benchmarks/sequential.md).

Two steps, two interpreters (RecTools pins numpy < 2 and Lightning <= 2.5.2, so it lives in its
own venv: ``python -m venv .venv-rectools && .venv-rectools/bin/pip install torch==2.13.0
'rectools[torch]==0.19.0'``):

    # 1. our split (the data of experiment=sasrec_ce_beauty), written once as arrays
    RECSYS_DATA_DIR=/path/to/datasets .venv/bin/python benchmarks/scripts/rectools_beauty.py \
        export <scratch>/beauty_split.npz
    # 2. RecTools trains on the training part, one epoch at a time (fit_partial), and ranks every
    #    item for each validation user after each epoch (seen items filtered, as ours)
    OMP_NUM_THREADS=2 .venv-rectools/bin/python benchmarks/scripts/rectools_beauty.py \
        run <scratch>/beauty_split.npz <scratch>/rectools.jsonl [epochs] [threads] [timed_epochs] [recipe]

The first ``timed_epochs`` epochs (default all) run on ``threads`` threads (default 2), the
rest on one thread, so that a long run to convergence can share the machine; the time to a
given quality is then the number of epochs times the ``threads``-thread epoch time. Each epoch
writes one JSON line: training wall and CPU seconds of the epoch alone (Lightning
epoch start to end, RecTools' own loop and data loader), the validation NDCG@10 / HR@10 and the
process peak RSS. The default recipe, ``2x64``, is RecTools' SASRec with the compared settings:
full softmax loss, 2 blocks, 64 factors, session_max_len 50, batch 128; everything else is
RecTools' default (4 heads, dropout 0.2, lr 1e-3, its SASRec layers and initialisation).

``recipe=esasrec`` is instead the SASRec of the eSASRec benchmark's leave-one-out table
(``configs/paper/loo/s3_vanilla.yaml`` of blondered/transformer_benchmark: 1 block, 1 head, 256
factors, dropout 0.2, sampled softmax over 256 negatives, session_max_len 50, batch 128, lr 1e-3,
RecTools' betas), the row with the published test NDCG@10 0.0531 / Recall@10 0.0921. Each line
then also has the test NDCG@10 / HR@10 of that epoch's model: histories are training plus the
validation item, as in that benchmark (and ours); the epoch to report is the one with the best
validation score.

After every epoch the script also rewrites ``<out>.ckpt``, RecTools' own trainer checkpoint
(weights, Adam state, epoch count); run the same command again and it goes on from there,
appending to ``out``, so a run to convergence can span several sittings (the data order after a
resume differs from an uninterrupted run's).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def export(out: str) -> None:
    """Our leave-one-out split of Amazon Beauty: training events in time order, one validation
    and one test item per user (internal ids)."""
    from hydra import compose, initialize_config_dir

    from recsys.cli import CONFIG_DIR
    from recsys.training.runs import datamodule_from_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sasrec_ce_beauty", "data.download=false"])
    dm = datamodule_from_config(cfg)
    split = dm.data
    arrays = {}
    for name, part in (("train", split.train), ("val", split.val), ("test", split.test)):
        perm = part.order()
        arrays[f"{name}_user"] = part.user[perm]
        arrays[f"{name}_item"] = part.item[perm]
    np.savez(out, n_items=dm.n_items, n_users=dm.n_users, **arrays)
    print({k: len(v) for k, v in arrays.items() if k.endswith("_user")}, "items", dm.n_items)


RECIPES = {
    "2x64": dict(n_blocks=2, n_factors=64, loss="softmax"),
    "esasrec": dict(
        n_blocks=1,
        n_heads=1,
        n_factors=256,
        dropout_rate=0.2,
        loss="sampled_softmax",
        n_negatives=256,
    ),
}


def run(
    split_path: str, out: str, epochs: int, threads: int, timed_epochs: int, recipe: str = "2x64"
) -> None:
    import pandas as pd
    import pytorch_lightning as pl
    import torch
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(threads)
    z = np.load(split_path)
    n = len(z["train_user"])
    inter = pd.DataFrame(
        {
            Columns.User: z["train_user"],
            Columns.Item: z["train_item"],
            Columns.Weight: 1.0,
            # time order of our split; RecTools sorts each user's events by it
            Columns.Datetime: pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(n), "s"),
        }
    )
    dataset = Dataset.construct(inter)
    val_user, val_item = z["val_user"], z["val_item"]
    # the test inputs: training events, then each user's validation item
    with_val = pd.concat(
        [
            inter,
            pd.DataFrame(
                {
                    Columns.User: val_user,
                    Columns.Item: val_item,
                    Columns.Weight: 1.0,
                    Columns.Datetime: pd.Timestamp("2020-01-01")
                    + pd.to_timedelta(n + np.arange(len(val_user)), "s"),
                }
            ),
        ]
    )
    test_dataset = Dataset.construct(with_val)

    class EpochClock(pl.Callback):  # RecTools deep-copies its trainer: times go to the class
        t0 = c0 = wall = cpu = 0.0

        def on_train_epoch_start(self, trainer, module):
            EpochClock.t0, EpochClock.c0 = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, module):
            EpochClock.wall = time.perf_counter() - EpochClock.t0
            EpochClock.cpu = time.process_time() - EpochClock.c0

    clock = EpochClock

    def trainer(epochs: int = 1) -> pl.Trainer:  # RecTools' default trainer + clock, on the CPU
        return pl.Trainer(
            max_epochs=epochs,
            min_epochs=epochs,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            callbacks=[EpochClock()],
        )

    state = Path(out + ".ckpt")  # RecTools' own trainer checkpoint, rewritten after each epoch
    # resume: weights, Adam state and epoch count (not the shuffling RNG)
    done = torch.load(state, weights_only=False)["epoch"] if state.exists() else 0
    if done:
        # restoring refits on an empty loader, which must stop at the epochs already done
        resumed = functools.partial(trainer, done)
        model = SASRecModel.load_from_checkpoint(
            state, model_params_update={"get_trainer_func": resumed}
        )
    else:
        model = SASRecModel(
            **RECIPES[recipe],
            session_max_len=50,
            batch_size=128,
            epochs=1,
            get_trainer_func=trainer,
            recommend_torch_device="cpu",
        )

    def ndcg_hr(users, items, data) -> tuple[float, float]:
        reco = model.recommend(users, data, k=10, filter_viewed=True)
        rank = reco.merge(
            pd.DataFrame({Columns.User: users, Columns.Item: items}),
            on=[Columns.User, Columns.Item],
        )[Columns.Rank].to_numpy()
        return float((1.0 / np.log2(rank + 1)).sum() / len(users)), len(rank) / len(users)

    wall = cpu = 0.0
    if done:
        last = json.loads(Path(out).read_text().splitlines()[-1])
        if last["epoch"] != done - 1:
            raise SystemExit(f"{state} holds {done} epochs but {out} ends at epoch {last['epoch']}")
        wall, cpu = last["train_wall_s"], last["train_cpu_s"]
        print(f"resuming after epoch {done - 1} from {state}", flush=True)
    with open(out, "a") as f:
        for epoch in range(done, epochs):
            threads_now = threads if epoch < timed_epochs else 1
            torch.set_num_threads(threads_now)
            model.fit_partial(dataset, min_epochs=1, max_epochs=1)
            wall, cpu = wall + clock.wall, cpu + clock.cpu
            t0 = time.perf_counter()
            ndcg, hr = ndcg_hr(val_user, val_item, dataset)
            rec = {
                "epoch": epoch,
                "epoch_wall_s": round(clock.wall, 2),
                "epoch_cpu_s": round(clock.cpu, 2),
                "train_wall_s": round(wall, 2),
                "train_cpu_s": round(cpu, 2),
                "val_ndcg@10": round(ndcg, 5),
                "val_hr@10": round(hr, 5),
                "recommend_s": round(time.perf_counter() - t0, 2),
                "threads": threads_now,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
            if recipe == "esasrec":
                test_ndcg, test_hr = ndcg_hr(z["test_user"], z["test_item"], test_dataset)
                rec.update({"test_ndcg@10": round(test_ndcg, 5), "test_hr@10": round(test_hr, 5)})
            print(json.dumps(rec), flush=True)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            tmp = state.with_suffix(".tmp")
            model.fit_trainer.save_checkpoint(tmp)
            os.replace(tmp, state)  # never a half-written checkpoint


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 20
        threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
        timed = int(sys.argv[6]) if len(sys.argv) > 6 else epochs
        run(sys.argv[2], sys.argv[3], epochs, threads, timed, *sys.argv[7:8])
