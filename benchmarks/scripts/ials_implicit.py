"""Our iALS against implicit 0.7.3's ALS on the same split: process CPU seconds per iteration on
one thread, and validation / test metrics of both factorisations through our evaluation.

    make implicit-venv                       # implicit==0.7.3 in .venv-implicit
    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=<datasets> python -m benchmarks.scripts.ials_implicit \\
        ials_ml100k [hydra overrides ...] [--implicit-reg 0.01] [--implicit-alpha 10]

The experiment (``configs/experiment/<name>.yaml``) gives the split and our settings; the same
training matrix (binarised) is handed to implicit (``use_cg=True``, ``cg_steps`` and factor count
as ours, ``num_threads=1``) in its own venv. Timing: ``time.process_time`` around each of our
sweeps and between implicit's per-iteration callbacks (so other load on the machine disturbs it
least); the median over iterations is printed. implicit's factors are scored by loading them into
an ``IALS`` model, so both sides are evaluated by the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.runner.matrix import compose
from recsys.data.datamodule import RecDataModule
from recsys.training.module import RecModule
from recsys.training.runs import eval_settings, evaluate

IMPLICIT = r"""
import json, sys, time
import numpy as np, scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
z = np.load(sys.argv[1]); a = json.loads(sys.argv[2])
m = sp.csr_matrix((np.ones(len(z["indices"]), np.float32), z["indices"], z["indptr"]),
                  shape=tuple(z["shape"]))
als = AlternatingLeastSquares(factors=a["factors"], regularization=a["reg"], alpha=a["alpha"],
                              iterations=a["iterations"], use_cg=True, num_threads=1,
                              random_state=a["seed"])
als.cg_steps = a["cg_steps"]
times, last = [], [time.process_time()]
def tick(iteration, elapsed, loss):
    now = time.process_time(); times.append(now - last[0]); last[0] = now
als.fit(m, show_progress=False, callback=tick)
np.savez(sys.argv[3], user=als.user_factors, item=als.item_factors, times=np.array(times))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--implicit-python", default=".venv-implicit/bin/python")
    ap.add_argument("--implicit-reg", type=float, default=0.01)
    ap.add_argument("--implicit-alpha", type=float, default=None, help="default: 1 / α₀")
    ap.add_argument("--skip-ours", action="store_true")
    args = ap.parse_intermixed_args()  # options before or after the overrides
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="ials_implicit_"))
    config = OmegaConf.to_container(
        compose([f"experiment={args.experiment}", *args.overrides], out), resolve=True
    )
    dm = RecDataModule(config["data"], seed=int(config["seed"]))
    dm.setup()
    train = dm.train_matrix()
    mcfg = config["model"]
    rows = {}

    def module() -> RecModule:
        return RecModule(mcfg, dm.n_users, dm.n_items, evaluation=eval_settings(config))

    def scores(m: RecModule) -> dict[str, float]:
        dm.configure_for(m.model)
        val, _ = evaluate(m, dm, "val", "cpu")
        test, _ = evaluate(m, dm, "test", "cpu")
        return {"val_mrr@10": val["mrr@10"], "test_ndcg@10": test["ndcg@10"]}

    if not args.skip_ours:
        ours = module()
        model = ours.model
        torch.manual_seed(int(config["seed"]))
        with torch.no_grad():
            std = model.init_std / model.embedding_size**0.5
            model.user_factors = torch.randn_like(model.user_factors) * std
            model.item_factors = torch.randn_like(model.item_factors) * std
            users, items = model.sides(train)
            times = []
            for _ in range(model.iterations):
                t = time.process_time()
                model.sweep(users, items)
                times.append(time.process_time() - t)
        rows["ours"] = {"cpu_s_per_iter": statistics.median(times), **scores(ours)}

    x = train.coalesce()
    u, i = x.indices().numpy()
    indptr = np.zeros(dm.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=dm.n_users), out=indptr[1:])
    np.savez(out / "train.npz", indptr=indptr, indices=i, shape=np.array(train.shape))
    settings = {
        "factors": mcfg["embedding_size"],
        "reg": args.implicit_reg,
        "alpha": args.implicit_alpha or 1.0 / mcfg["unobserved_weight"],
        "iterations": mcfg["iterations"],
        "cg_steps": mcfg["cg_steps"],
        "seed": int(config["seed"]),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run(
        [
            args.implicit_python,
            "-c",
            IMPLICIT,
            str(out / "train.npz"),
            json.dumps(settings),
            str(out / "implicit.npz"),
        ],
        check=True,
        env=env,
    )
    z = np.load(out / "implicit.npz")
    theirs = module()
    theirs.model.user_factors = torch.from_numpy(z["user"]).float()
    theirs.model.item_factors = torch.from_numpy(z["item"]).float()
    rows["implicit 0.7.3"] = {
        "cpu_s_per_iter": float(np.median(z["times"])),
        **scores(theirs),
        "settings": settings,
    }
    print(json.dumps({"experiment": args.experiment, "overrides": args.overrides, **rows}))


if __name__ == "__main__":
    sys.exit(main())
