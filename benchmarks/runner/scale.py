"""The scale benchmark: load, split, one MF epoch and full-ranking evaluation at 1M-100M events.

    python -m benchmarks.runner scale --sizes 1M,20M,100M    # -> outputs/bench/scale-<date_time>/

Each size runs in its own process (``python -m benchmarks.runner _scale <spec>``) through the
normal path (:func:`recsys.training.train.train`) on a synthetic log of a public dataset's shape
(:data:`SCALE_SHAPES`), generated in memory by :func:`scale_source`
(``data.source=benchmarks.runner.scale.scale_source``). Each phase's time, CPU time and memory
are recorded; a stopped run still leaves ``scale_progress.jsonl`` and ``scale.log`` per size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from benchmarks.runner.machine import current_rss_mb, machine_info, peak_rss_mb
from benchmarks.runner.matrix import REPO, EpochTimer, compose
from benchmarks.runner.render import render_scale

# (users, items) of the scale points: MovieLens-20M's shape at 20M, Netflix's at 100M
SCALE_SHAPES = {
    "100k": (2_000, 1_000, 100_000),  # a smoke test of the machinery
    "1M": (6_040, 3_706, 1_000_000),  # MovieLens-1M's shape
    "20M": (138_493, 26_744, 20_000_000),
    "100M": (480_189, 17_770, 100_000_000),
}


SOURCE_STATS: dict[str, float] = {}  # the last scale_source call: generation time and memory


def scale_source(cfg) -> Any:
    """:func:`scale_log`, timed (wall and CPU seconds, peak RSS after it: ``SOURCE_STATS``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    df = scale_log(cfg)
    SOURCE_STATS.update(
        s=round(time.perf_counter() - t0, 2),
        cpu_s=round(time.process_time() - c0, 2),
        peak_rss_mb=peak_rss_mb(),
        rss_mb=current_rss_mb(),
    )
    return df


def scale_log(cfg) -> Any:
    """Data source for the scale runs: a large synthetic log, generated in a few vectorized passes.

    Users' history lengths are log-normal (floor ``scale_min_length``), items follow a Zipf law
    over a random order, and a share ``scale_p_taste`` of each user's items comes from one of
    ``scale_groups`` taste groups. Repeated (user, item) draws are dropped here (sorting the
    ``user * n_items + item`` keys), so the number of unique events is close to
    ``scale_interactions``; ``time`` is a random order within each user.
    """
    import pandas as pd

    n_users, n_items = int(cfg["scale_users"]), int(cfg["scale_items"])
    target, min_len = int(cfg["scale_interactions"]), int(cfg.get("scale_min_length", 20))
    groups, p_taste = int(cfg.get("scale_groups", 20)), float(cfg.get("scale_p_taste", 0.6))
    rng = np.random.default_rng(int(cfg.get("generator_seed", 0)))
    raw = rng.lognormal(0.0, 1.1, n_users)
    order = rng.permutation(n_items)  # the item at popularity rank r is order[r]
    per_group = max(n_items // groups, 1)

    def draw(users: np.ndarray, factor: float) -> np.ndarray:
        """Sorted unique ``user * n_items + item`` keys of ``users``' histories."""
        extra = max(factor * target - min_len * n_users, 0.0)
        lengths = (min_len + np.floor(raw[users] / raw.sum() * extra)).astype(np.int64)
        user = np.repeat(users, lengths.clip(max=n_items // 2))
        u = rng.random(len(user))
        rank = np.minimum(
            np.expm1(u * np.log1p(n_items)).astype(np.int64), n_items - 1
        )  # P(r) ~ 1/(r+1)
        taste = rng.random(len(user)) < p_taste
        g = (user[taste] * 2_654_435_761) % groups  # a fixed taste group per user
        in_group = np.minimum(
            np.expm1(u[taste] * np.log1p(per_group)).astype(np.int64), per_group - 1
        )
        rank[taste] = g * per_group + in_group
        del u, taste, g, in_group
        return np.unique(user * n_items + order[rank])

    # repeated draws are dropped: a pilot on a sample of users sets how many to draw
    pilot = np.sort(rng.choice(n_users, size=min(n_users, 5_000), replace=False))
    factor = 1.0
    for _ in range(3):
        kept = len(draw(pilot, factor)) * n_users / len(pilot)
        factor *= target / kept
    # blocks of users of about 4M draws each: the draw's temporaries stay small; external ids
    # are int32 (1-based), the columns are handed to the frame without a copy
    per_user = max(factor * target / n_users, 1.0)
    block = max(int(4_000_000 / per_user), 1)
    users, items = [], []
    for start in range(0, n_users, block):
        key = draw(np.arange(start, min(start + block, n_users), dtype=np.int64), factor)
        users.append((key // n_items + 1).astype(np.int32))
        items.append((key % n_items + 1).astype(np.int32))
        del key
    user = np.concatenate(users)
    del users
    item = np.concatenate(items)
    del items
    time = rng.random(len(user))  # a random order of each user's events
    return pd.DataFrame({"user": user, "item": item, "time": time}, copy=False)


def progress(out: Path, stage: str, **values: Any) -> None:
    """Append one line to ``<out>/scale_progress.jsonl``: a long scale run that is stopped
    still leaves the phases it finished, with time, CPU time and memory."""
    row = {
        "stage": stage,
        "at": time.strftime("%H:%M:%S"),
        "cpu_s": round(time.process_time(), 1),
        "rss_mb": current_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        **values,
    }
    with open(Path(out) / "scale_progress.jsonl", "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


class ScaleProgress(pl.Callback):
    """Progress lines of a scale run at the end of the training part and of each validation."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_validation_start(self, trainer, pl_module) -> None:
        timer = EpochTimer.last
        if timer is not None and timer.train_s:
            progress(
                self.out, "trained", epoch_s=timer.train_s[-1], epoch_cpu_s=timer.train_cpu_s[-1]
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        progress(self.out, "validated")

    def on_test_end(self, trainer, pl_module) -> None:
        progress(self.out, "tested")


def run_scale_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, split, train one MF epoch and evaluate by full ranking; time and memory per phase."""
    import recsys.data.datamodule as datamodule
    from recsys.training.train import train

    phases: dict[str, Any] = {}
    prepare = datamodule.prepare

    def timed_prepare(cfg, seed):  # the data pipeline: source, preprocess, encode, split
        t0, c0 = time.perf_counter(), time.process_time()
        split = prepare(cfg, seed)
        phases["load_split_s"] = round(time.perf_counter() - t0, 2)
        phases["load_split_cpu_s"] = round(time.process_time() - c0, 2)
        phases["load_split_peak_rss_mb"] = peak_rss_mb()
        phases["rss_after_load_mb"] = current_rss_mb()
        source = SOURCE_STATS  # filled by scale_source, which the pipeline imported from here
        progress(out, "loaded", **phases, **{f"source_{k}": v for k, v in source.items()})
        return split

    datamodule.prepare = timed_prepare
    out = Path(spec["output_dir"])
    cfg = compose(
        list(spec["overrides"])
        + [
            "+callbacks.bench_timer._target_=benchmarks.runner.matrix.EpochTimer",
            "+callbacks.scale_progress._target_=benchmarks.runner.scale.ScaleProgress",
            f"+callbacks.scale_progress.out={out}",
        ],
        out,
    )
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    timer = EpochTimer.last
    source = dict(SOURCE_STATS)
    return {
        "size": spec["size"],
        "source_s": source.get("s"),
        "source_cpu_s": source.get("cpu_s"),
        "source_peak_rss_mb": source.get("peak_rss_mb"),
        "rss_after_load_mb": phases.get("rss_after_load_mb"),
        "peak_rss_after_train_mb": timer.peak_rss_train_mb[0]
        if timer and timer.peak_rss_train_mb
        else None,
        "overrides": spec["overrides"],
        "data": {k: v for k, v in metrics["data"].items() if k != "audit"},
        "load_split_s": phases.get("load_split_s"),
        "load_split_cpu_s": phases.get("load_split_cpu_s"),
        "load_split_peak_rss_mb": phases.get("load_split_peak_rss_mb"),
        "train_epoch_s": round(timer.train_s[0], 2) if timer and timer.train_s else None,
        "train_epoch_cpu_s": round(timer.train_cpu_s[0], 2) if timer and timer.train_s else None,
        "val_pass_s": round(timer.val_s[0], 2) if timer and timer.val_s else None,
        "test_pass_s": metrics["timing"]["eval_s"],
        "wall_s": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),
        "test": {k: metrics["test"][k] for k in ("ndcg@10", "recall@10")},
    }


def scale_overrides(size: str) -> list[str]:
    users, items, inter = SCALE_SHAPES[size]
    return [
        "model=mf",
        "data=synthetic",
        "data.source=benchmarks.runner.scale.scale_source",
        f"+data.scale_users={users}",
        f"+data.scale_items={items}",
        f"+data.scale_interactions={inter}",
        "data.dedup=false",
        "data.cache=false",
        "data.batch_size=131072",
        "optim.lr=0.01",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "~logger",
        "eval.baseline=null",
        "eval.batch_size=4096",
        "eval.topk=[10]",
        "callbacks.model_checkpoint.save_last=false",
    ]


def scale_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.runner scale")
    ap.add_argument(
        "--sizes", default="1M,20M,100M", help=f"comma-separated of {list(SCALE_SHAPES)}"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="the markdown to write, a .json beside it (default: <runs-dir>/scale.md, so that "
        "the written report benchmarks/scale.md is never overwritten)",
    )
    ap.add_argument("--runs-dir", default=None, help="default: outputs/bench/scale-<date_time>")
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args(argv)
    runs = Path(
        args.runs_dir
        or REPO / "outputs" / "bench" / ("scale-" + time.strftime("%Y-%m-%d_%H-%M-%S"))
    )
    info = machine_info()
    rows = []
    for size in args.sizes.split(","):
        out = runs / size
        out.mkdir(parents=True, exist_ok=True)
        spec = {"size": size, "overrides": scale_overrides(size), "output_dir": str(out)}
        (out / "scale_spec.json").write_text(json.dumps(spec))
        print(
            f"scale: {size}: python -m recsys.cli.train {' '.join(spec['overrides'])}",
            flush=True,
        )
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        log_path = out / "scale.log"  # streamed: a stopped run leaves its log
        with open(log_path, "w") as log_file:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.runner",
                    "_scale",
                    str(out / "scale_spec.json"),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=args.timeout,
                cwd=REPO,
            )
        proc_err = log_path.read_text()[-3000:]
        res_path = out / "scale_result.json"
        if proc.returncode != 0 or not res_path.is_file():
            res = {
                "size": size,
                "overrides": spec["overrides"],
                "status": "failed",
                "error": proc_err[-1500:],
            }
            print(f"scale: {size} failed: {proc_err[-800:]}", flush=True)
        else:
            res = json.loads(res_path.read_text())
            res["status"] = "ok"
            res["process_wall_s"] = round(time.perf_counter() - t0, 2)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            res["process_cpu_s"] = round(
                ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1
            )
            print(f"scale: {size}: {json.dumps(res)}", flush=True)
        res["load_avg_start"] = round(load0, 2)
        rows.append(res)
    from recsys.files import write_json

    out_md = Path(args.out) if args.out else runs / "scale.md"
    write_json(
        out_md.with_suffix(".json"),
        {
            "machine": info,
            "command": "python -m benchmarks.runner scale " + " ".join(argv),
            "results": rows,
        },
    )
    out_md.write_text(render_scale(info, rows, argv))
    print(f"scale: wrote {out_md}", flush=True)
