"""Our BPR-MF epoch and implicit's (0.7.3) on the same training pairs, epoch by epoch in turn.

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets \
      python -m benchmarks.scripts.mf_vs_implicit ml-100k --epochs 16 [--implicit-python P] [...]

The first argument is ``ml-100k`` (RecBole's random 8:1:1 split, seed 2020: 80,808 training
pairs), ``ml-1m`` (``bpr_ml1m``'s split: 804,141) or a synthetic size of the scale benchmark
(``1M``, ``20M``, ``100M``: benchmarks/runner/scale.py); anything after the options is a Hydra
override of our side. Both sides train 64 factors with one uniform negative per pair on one
thread. Ours is ``recsys-train``'s training loop (RecModule through Lightning; no validation, no
checkpoints) with ``bpr_tuned_ml100k``'s training settings (row-sparse gradients, row-wise
Adagrad lr 0.02, batch 8,192, ``optim.steps_per_call=64``, the step compiled) unless
overridden (the dense Adam path before them: ``model.sparse=false optim=adam optim.lr=0.001
data.batch_size=2048``); implicit's is its ``fit`` with
``num_threads=1`` in its own interpreter (``benchmarks/scripts/implicit_bpr.py``; default
``.venv-implicit/bin/python``: ``make implicit-venv``, or ``python3 -m venv .venv-implicit &&
.venv-implicit/bin/pip install implicit==0.7.3 numpy scipy``). After each of our epochs implicit
trains one (ours waits, implicit's waits for ours), so the two share the machine's state epoch by
epoch; each side's process CPU seconds per epoch are its own (the waiting side uses none). The
first pair is a warm-up and is dropped. Prints one line per pair and the medians; ``--json``
writes them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from benchmarks.runner.matrix import REPO, EpochTimer, compose
from benchmarks.runner.scale import SCALE_SHAPES, scale_overrides
from recsys.training.runs import datamodule_from_config, module_for

DATASETS = {
    "ml-100k": [
        "experiment=bpr_ml100k",
        "seed=2020",
        "data.download=false",
    ],
    "ml-1m": ["experiment=bpr_ml1m", "model.embedding_size=64", "model.num_negatives=1", "seed=0"],
}
OURS = [  # our side of every size: bpr_tuned_ml100k's training at 64 factors and one negative
    "model.embedding_size=64",
    "model.num_negatives=1",
    "model.sparse=true",
    "optim=row_adagrad",
    "optim.lr=0.02",
    "optim.steps_per_call=64",
    "data.batch_size=8192",
    "trainer.accelerator=cpu",
]


def overrides(name: str, extra: list[str]) -> list[str]:
    if name in DATASETS:
        base = DATASETS[name]
    elif name in SCALE_SHAPES:  # the scale benchmark's log; its training settings are replaced
        keep = ("model=", "data=", "data.source", "+data.scale", "data.dedup", "data.cache")
        base = [o for o in scale_overrides(name) if o.startswith(keep)]
        base += ["model.init=xavier", "seed=0"]
    else:
        raise SystemExit(f"unknown dataset {name!r}: ml-100k, ml-1m or one of {list(SCALE_SHAPES)}")
    return [*base, *OURS, *extra]


class Alternate(pl.Callback):
    """After each of our training epochs, one epoch of the implicit child (ours waits)."""

    def __init__(self, child: subprocess.Popen):
        self.child = child
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.child.stdin.write("go\n")
        self.child.stdin.flush()
        line = self.child.stdout.readline().split()
        if not line or line[0] != "epoch":
            raise RuntimeError(f"implicit child: unexpected {line!r}")
        self.cpu.append(float(line[1]))
        self.wall.append(float(line[2]))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scripts.mf_vs_implicit")
    ap.add_argument("data", help="ml-100k | ml-1m | " + " | ".join(SCALE_SHAPES))
    ap.add_argument("--epochs", type=int, default=12, help="epochs of each side (pairs)")
    ap.add_argument("--implicit-python", default=str(REPO / ".venv-implicit" / "bin" / "python"))
    ap.add_argument("--json", default=None, help="write the figures here")
    args, extra = ap.parse_known_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(overrides(args.data, extra), Path(tmp) / "run")
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(cfg, resolve=True)
        pl.seed_everything(config["seed"], verbose=False)
        c0 = time.process_time()
        dm = datamodule_from_config(config)
        dm.setup()
        load_cpu = time.process_time() - c0
        train = dm.data.train
        pairs = Path(tmp) / "pairs.npz"
        np.savez(
            pairs,
            user=train.user.astype(np.int32),
            item=train.item.astype(np.int32),
            n_users=dm.n_users,
            n_items=dm.n_items,
        )
        module = module_for(config, dm)
        child = subprocess.Popen(
            [args.implicit_python, str(REPO / "benchmarks/scripts/implicit_bpr.py"), str(pairs)]
            + [str(config["model"]["embedding_size"]), str(args.epochs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = child.stdout.readline().split()
        assert ready and ready[0] == "ready", ready
        timer, alternate = EpochTimer(), Alternate(child)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[timer, alternate],
        )
        trainer.fit(module, datamodule=dm)
        child.stdin.close()
        child.wait(timeout=60)

    ours, theirs = np.array(timer.train_cpu_s[1:]), np.array(alternate.cpu[1:])
    n_pairs = len(train.user)
    print(
        f"{args.data}: {n_pairs:,} training pairs, {dm.n_users:,} users, {dm.n_items:,} items; "
        f"load + split {load_cpu:.1f} CPU s"
    )
    for e, (a, b) in enumerate(zip(ours, theirs, strict=True), start=2):
        print(f"epoch {e}: ours {a:.4f}  implicit {b:.4f}  ratio {a / b:.2f}")
    ratio = ours / theirs
    summary = {
        "data": args.data,
        "pairs": n_pairs,
        "users": dm.n_users,
        "items": dm.n_items,
        "overrides": overrides(args.data, extra),
        "ours_cpu_s": ours.tolist(),
        "implicit_cpu_s": theirs.tolist(),
        "ours_median": float(np.median(ours)),
        "implicit_median": float(np.median(theirs)),
        "ratio_median": float(np.median(ratio)),
        "ours_us_per_pair": float(np.median(ours)) / n_pairs * 1e6,
        "implicit_us_per_pair": float(np.median(theirs)) / n_pairs * 1e6,
    }
    print(
        f"median: ours {summary['ours_median']:.4f} CPU s ({summary['ours_us_per_pair']:.3f} us "
        f"per pair), implicit {summary['implicit_median']:.4f} "
        f"({summary['implicit_us_per_pair']:.3f} us); ours / implicit: median {np.median(ratio):.2f} (min {ratio.min():.2f}, max "
        f"{ratio.max():.2f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
