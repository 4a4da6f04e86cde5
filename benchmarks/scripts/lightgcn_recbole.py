"""LightGCN side by side with RecBole 1.2.1's LightGCN, through the benchmark runner's RecBole
comparison (benchmarks/runner/recbole.py: same split written as atomic files, same settings).

    make recbole-venv
    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=<datasets> python -m benchmarks.scripts.lightgcn_recbole \\
        --out <scratch>/lightgcn-recbole [--only lightgcn-ml-100k]

Two entries, the common settings of benchmarks/matrices/full.yaml (seed 2020, early stopping on
validation MRR@10 after 10 evaluations):

- ``lightgcn-ml-100k``: our experiment ``lightgcn_ml100k`` trained to early stopping on both
  sides (quality and epoch time);
- ``lightgcn-ml-1m-epoch``: ``lightgcn_ml1m``'s data at batch 2,048, lr 1e-3, one negative and
  reg 1e-4 (the settings of the report's row), one training epoch and one validation pass on each
  side (epoch time only: the metrics after one epoch are not results).

The runner writes ``matrix.md`` / ``matrix.json`` under ``--out`` and the runs under
``--out``/runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from benchmarks.runner.matrix import run_matrix

COMMON = [
    "trainer.accelerator=auto",
    "trainer.enable_progress_bar=false",
    "~logger",
    "data.download=false",
    "seed=2020",
    "eval.monitor='val/mrr@10'",
    "callbacks.early_stopping.patience=10",
]
ENTRIES = [
    {
        "name": "lightgcn-ml-100k",
        "model": "lightgcn",
        "data": "ml-100k",
        "overrides": ["experiment=lightgcn_ml100k"],
        "recbole": {"model": "LightGCN"},
    },
    {
        "name": "lightgcn-ml-1m-epoch",
        "model": "lightgcn",
        "data": "ml-1m",
        # the settings this entry was measured with (the report's row), not the tuned ones
        "overrides": [
            "experiment=lightgcn_ml1m",
            "trainer.max_epochs=1",
            "data.batch_size=2048",
            "optim.lr=0.001",
            "model.num_negatives=1",
            "model.reg=1.0e-4",
        ],
        "recbole": {"model": "LightGCN", "epochs": 1, "stopping_step": 1},
    },
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for matrix.md/.json and the runs")
    ap.add_argument("--only", default=None, help="comma-separated entry names")
    ap.add_argument("--recbole-python", default=None, help="python of the RecBole venv")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per entry and side")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    matrix = out / "lightgcn_recbole.yaml"
    matrix.write_text(yaml.safe_dump({"common": COMMON, "entries": ENTRIES}, sort_keys=False))
    run_matrix(
        argparse.Namespace(
            matrix=str(matrix),
            quick=False,
            out=str(out),
            runs_dir=str(out / "runs"),
            only=args.only,
            compare="recbole",
            recbole_python=args.recbole_python,
            timeout=args.timeout,
            peak_n=1024,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
