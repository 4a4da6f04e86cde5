"""Per-user paired tests on the cold-item slice between a checkpoint and finished runs.

``recsys-compare`` pairs finished runs; a run stopped early (for time) is evaluated here from its
best checkpoint (chosen on validation), and its per-user test values on cold items are paired
with each run's ``per_user_test.npz`` by user (paired t-test and Wilcoxon, scipy):

    RECSYS_DATA_DIR=<datasets> .venv/bin/python benchmarks/scripts/cold_paired.py \\
        <run>/checkpoints/best.ckpt <attr_knn run> <pop_category run> [--metric cold/recall@20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats

from recsys.training.runs import evaluate, open_run


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("runs", nargs="+")
    p.add_argument("--metric", action="append")
    args = p.parse_args()
    metrics = args.metric or ["cold/recall@20", "cold/ndcg@20"]
    run = open_run(args.checkpoint, allow_unfinished=True)
    test, per_user = evaluate(run.module, run.datamodule, "test", "cpu")
    users = np.asarray(per_user["user"])
    for m in metrics:
        ours = dict(
            zip(users.tolist(), np.asarray(per_user[m], dtype=np.float64).tolist(), strict=True)
        )
        ours = {u: v for u, v in ours.items() if not np.isnan(v)}
        print(f"{m}: checkpoint {test[m]:.4f} over {len(ours)} users")
        for r in args.runs:
            with np.load(Path(r) / "per_user_test.npz") as z:
                theirs = dict(
                    zip(z["user"].tolist(), z[m].astype(np.float64).tolist(), strict=True)
                )
            common = sorted(u for u in ours if u in theirs and not np.isnan(theirs[u]))
            a = np.array([ours[u] for u in common])
            b = np.array([theirs[u] for u in common])
            t = stats.ttest_rel(a, b).pvalue
            w = stats.wilcoxon(a, b).pvalue
            print(
                f"  vs {Path(r).name}: {b.mean():.4f} ({len(common)} users), difference "
                f"{a.mean() - b.mean():+.4f}, paired t p={t:.2g}, Wilcoxon p={w:.2g}"
            )


if __name__ == "__main__":
    main()
