"""The benchmark matrix: each entry trained in its own process, then measured.

A matrix file (``benchmarks/matrices/*.yaml``) lists entries ``(name, model, data, overrides)``
plus ``common`` overrides. Each entry is trained through the normal path
(:func:`recsys.training.train.train` on the composed configs) in its own subprocess, so peak host
memory (``VmHWM``, the process high-water mark) is per entry. Entries whose model or data config
does not exist, or whose dataset files are absent under the data root, are skipped with the
reason printed.

Besides the run's ``metrics.json`` the child measures: training time per epoch without the
validation pass (:class:`EpochTimer`), samples per epoch, and a standalone full-ranking pass over
the test users: the score computation alone and the whole pass (score, mask, top-k, metrics). For
MF the score computation is a ``(B, d) @ (d, I)`` matmul; its rate is reported against this
machine's fp32 matmul peak (a large square ``torch.mm``). The parent writes ``matrix.json`` and
``matrix.md`` (:mod:`benchmarks.runner.render`) after every entry.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks.runner.machine import machine_info, matmul_peak, peak_rss_mb, sync
from benchmarks.runner.render import render_markdown

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
MATRIX_DIR = REPO / "benchmarks" / "matrices"
REPORT_NAME = "matrix"  # <out>/matrix.md and <out>/matrix.json


# -- per-epoch timing callback ------------------------------------------------------------------
class EpochTimer(pl.Callback):
    """Training time of each epoch without its validation pass, and samples trained per epoch.

    Lightning runs validation inside the training epoch (before ``on_train_epoch_end``), so the
    training part is measured from the epoch start to the validation start.
    """

    last: EpochTimer | None = None

    def __init__(self) -> None:
        self.train_s: list[float] = []
        self.train_cpu_s: list[
            float
        ] = []  # process CPU time (all threads): robust to a busy machine
        self.val_s: list[float] = []
        self.val_cpu_s: list[float] = []
        self.samples: list[int] = []
        self.peak_rss_train_mb: list[float] = []  # process peak at the end of each training part
        self._t0 = self._v0 = self._c0 = self._vc0 = 0.0
        self._in_train = False
        EpochTimer.last = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self._in_train = True
        self.samples.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for b in batch if isinstance(batch, list) else [batch]:  # a list: optim.steps_per_call
            self.samples[-1] += len(b.user) if hasattr(b, "user") else 0

    def _end_train(self) -> None:
        if self._in_train:
            self.train_s.append(time.perf_counter() - self._t0)
            self.train_cpu_s.append(time.process_time() - self._c0)
            self.peak_rss_train_mb.append(peak_rss_mb())
            self._in_train = False

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._end_train()
        self._v0 = time.perf_counter()
        self._vc0 = time.process_time()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_s.append(time.perf_counter() - self._v0)
            self.val_cpu_s.append(time.process_time() - self._vc0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._end_train()


# -- matrix -------------------------------------------------------------------------------------
def load_matrix(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    m = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(m, dict)
    m.setdefault("common", [])
    m.setdefault("entries", [])
    for e in m["entries"]:
        e.setdefault("overrides", [])
        e.setdefault("name", f"{e['model']}-{e['data']}")
    return m


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def entry_overrides(matrix: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    return [
        f"model={entry['model']}",
        f"data={entry['data']}",
        *matrix["common"],
        *entry["overrides"],
    ]


def skip_reason(entry: dict[str, Any]) -> str | None:
    """Why an entry cannot run here (missing model/data config or dataset files), else None."""
    if not (CONFIG_DIR / "model" / f"{entry['model']}.yaml").is_file():
        return f"no model config configs/model/{entry['model']}.yaml"
    if not (CONFIG_DIR / "data" / f"{entry['data']}.yaml").is_file():
        return f"no data config configs/data/{entry['data']}.yaml"
    from omegaconf import OmegaConf

    from recsys.data.sources import data_root

    data = OmegaConf.to_container(
        compose([f"data={entry['data']}"], Path("."))["data"], resolve=True
    )
    names = [str(f) for f in (data.get("files") or [])] + [
        str(f) for f in (data.get("alternative_files") or [])
    ]
    if names:
        folder = data_root(data) / str(data.get("folder") or data.get("name", ""))
        if not any((folder / f).is_file() for f in names):
            return f"dataset files {names} absent under {folder} (set RECSYS_DATA_DIR)"
    return None


# -- one entry (child process) ------------------------------------------------------------------
def run_entry(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one entry through recsys.training.train.train and measure it; runs in its own process."""
    from recsys.training.runs import open_run
    from recsys.training.train import train

    out = Path(spec["output_dir"])
    overrides = list(spec["overrides"]) + [
        "+callbacks.bench_timer._target_=benchmarks.runner.matrix.EpochTimer"
    ]
    cfg = compose(overrides, out)
    cuda = torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    timer = EpochTimer.last  # hydra instantiated it from this module (the child runs __main__.py)
    result: dict[str, Any] = {
        "name": spec["name"],
        "model": spec["model"],
        "data": spec["data"],
        "overrides": spec["overrides"],
        "status": "ok",
        "test": metrics["test"],
        "val": metrics["val"],
        "baseline": metrics.get("baseline", {}).get("test"),
        "data_summary": {k: v for k, v in metrics["data"].items() if k != "audit"},
        "timing": dict(metrics["timing"]),
        "wall_s": round(wall, 2),
        "run_dir": str(out),
        "best_checkpoint": metrics["best_checkpoint"],
    }
    if timer is not None and timer.train_s:
        ts = np.array(timer.train_s)
        result["timing"]["train_s_per_epoch"] = round(float(np.median(ts)), 4)
        result["timing"]["train_cpu_s_per_epoch"] = round(float(np.median(timer.train_cpu_s)), 4)
        result["timing"]["val_s_per_epoch"] = (
            round(float(np.median(timer.val_s)), 4) if timer.val_s else None
        )
        result["timing"]["val_cpu_s_per_epoch"] = (
            round(float(np.median(timer.val_cpu_s)), 4) if timer.val_cpu_s else None
        )
        result["samples_per_epoch"] = int(np.median(timer.samples))
        result["train_throughput"] = round(float(np.median(np.array(timer.samples) / ts)), 1)

    # standalone full-ranking pass over the test users of the best checkpoint
    run = open_run(metrics["best_checkpoint"])
    module, dm = run.module, run.datamodule
    dev = torch.device("cuda" if cuda else "cpu")
    module.to(dev).eval()
    result["n_params"] = sum(p.numel() for p in module.model.parameters())
    result["eval"] = measure_eval(module, dm, dev)
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return result


def measure_eval(module, dm, dev: torch.device, repeats: int = 3) -> dict[str, Any]:
    """Time the score computation alone and the whole evaluation pass over the test users."""
    batches = [b.to(dev) for b in dm.test_dataloader()]
    n_users = sum(len(b.users) for b in batches)
    score_s = full_s = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            sync(dev)
            t0 = time.perf_counter()
            for b in batches:
                module.model.score(b.users)
            sync(dev)
            score_s = min(score_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            values = module.evaluate(batches)
            sync(dev)
            full_s = min(full_s, time.perf_counter() - t0)
    # the same pass as the run's test evaluation: its metric means must agree with metrics.json
    check = {k: float(v.double().mean()) for k, v in values.items() if k != "user"}
    out: dict[str, Any] = {
        "users": n_users,
        "items": dm.n_items,
        "batch_size": dm.eval_batch_size,
        "score_s": round(score_s, 4),
        "full_pass_s": round(full_s, 4),
        "users_per_s": round(n_users / full_s, 1),
        "test_check": check,
    }
    if module.model.exposes_embeddings:  # score = (B, d) @ (d, I)
        flops = 2.0 * n_users * dm.n_items * module.model.embeddings()["user"].shape[1]
        out["score_gflops"] = round(flops / score_s / 1e9, 1)
        # the peak again, in this process right now: on a shared machine the load drifts
        local = matmul_peak(n=2048, repeats=3, device=dev.type)
        out["local_peak_gflops"] = local["gflops"]
        out["score_local_peak_fraction"] = round(out["score_gflops"] / local["gflops"], 3)
    return out


# -- the matrix (parent) ------------------------------------------------------------------------
def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    matrix_path = Path(args.matrix or MATRIX_DIR / ("quick.yaml" if args.quick else "full.yaml"))
    matrix = load_matrix(matrix_path)
    out_dir = Path(
        args.out or (REPO / "outputs" / "bench-quick" if args.quick else REPO / "benchmarks")
    )
    runs = Path(args.runs_dir or REPO / "outputs" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    info = machine_info()
    print(
        f"bench: {matrix_path}  machine: {info['cpu']} x{info['cores']}  load {info['load_avg']}",
        flush=True,
    )
    peak = matmul_peak(n=args.peak_n)
    if torch.cuda.is_available():
        info["gpu_matmul_peak"] = matmul_peak(n=8192, device="cuda")
    print(f"bench: fp32 matmul peak {peak['gflops']} GFLOP/s (n={peak['n']})", flush=True)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    report = {
        "matrix": str(
            matrix_path.relative_to(REPO) if matrix_path.is_relative_to(REPO) else matrix_path
        ),
        "command": "python -m benchmarks.runner " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": info,
        "env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "RECSYS_DATA_DIR") if k in os.environ
        },
        "load_avg_end": None,
        "matmul_peak": peak,
        "results": results,
        "skipped": skipped,
        "notes": matrix.get("notes"),
    }
    only = set(args.only.split(",")) if args.only else None
    for entry in matrix["entries"]:
        if only and entry["name"] not in only:
            continue
        reason = skip_reason(entry)
        if reason:
            print(f"bench: skip {entry['name']}: {reason}", flush=True)
            skipped.append({"name": entry["name"], "reason": reason})
            continue
        spec = {
            "name": entry["name"],
            "model": entry["model"],
            "data": entry["data"],
            "overrides": entry_overrides(matrix, entry),
            "output_dir": str(runs / entry["name"]),
        }
        print(f"bench: run {entry['name']}: {' '.join(spec['overrides'])}", flush=True)
        res = run_child(spec, args.timeout)
        if res.get("status") == "ok":
            e = res.get("eval", {})
            if "score_gflops" in e:
                e["score_peak_fraction"] = round(e["score_gflops"] / peak["gflops"], 3)
            if args.compare == "recbole" and entry.get("recbole"):
                res["recbole"] = run_recbole(entry, res, args)
        else:
            print(f"bench: {entry['name']} failed: {res.get('error', '')[-500:]}", flush=True)
        results.append(res)
        write_report(report, out_dir)  # after every entry: a long bench leaves partial results
    write_report(report, out_dir)
    md, js = out_dir / f"{REPORT_NAME}.md", out_dir / f"{REPORT_NAME}.json"
    print(f"bench: wrote {md} and {js}", flush=True)
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    from recsys.files import write_json

    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{REPORT_NAME}.json", report)
    (out_dir / f"{REPORT_NAME}.md").write_text(render_markdown(report))


def run_child(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run one entry in a fresh interpreter; its result is the JSON it writes."""
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = out / "bench_spec.json", out / "bench_result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.runner", "_entry", str(spec_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return {**_head(spec), "status": "timeout", "error": f"over {timeout} s"}
    (out / "bench.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result_path.is_file():
        return {**_head(spec), "status": "failed", "error": proc.stderr[-2000:]}
    res = json.loads(result_path.read_text())
    res["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def _head(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in ("name", "model", "data", "overrides")}


def run_recbole(
    entry: dict[str, Any], ours: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    from benchmarks.runner import recbole as bench_recbole

    try:
        return bench_recbole.compare(entry, ours, python=args.recbole_python, timeout=args.timeout)
    except Exception as e:  # the comparison is optional: report, don't abort the bench
        print(f"bench: recbole {entry['name']} failed: {e}", flush=True)
        return {"status": "failed", "error": str(e)[-2000:]}
