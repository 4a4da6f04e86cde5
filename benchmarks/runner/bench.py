"""``python -m benchmarks.runner.bench``: the benchmark matrix, the matmul peak, and the scaling runs.

    python -m benchmarks.runner.bench                       # experiments/bench/full.yaml -> benchmarks/
    python -m benchmarks.runner.bench --quick               # experiments/bench/quick.yaml -> outputs/bench-quick/
    python -m benchmarks.runner.bench --compare recbole --recbole-python .venv-recbole/bin/python
    python -m benchmarks.runner.bench scale --sizes 1M,20M,100M   # -> benchmarks/scale.md

A matrix file lists entries ``(name, model, data, overrides)``. Each entry is trained through
the normal path (:func:`recsys.training.train.train` on the composed configs) in its own subprocess, so
peak host memory (``VmHWM``, the process high-water mark) is per entry. Entries whose model or data config does not exist,
or whose dataset files are absent under the data root, are skipped with the reason printed.

Besides the run's ``metrics.json`` the child measures: training time per epoch without the
validation pass (a callback), samples per epoch, and a standalone full-ranking pass over the
test users: the score computation alone and the whole pass (score, mask, top-k, metrics). For
MF the score computation is a ``(B, d) @ (d, I)`` matmul; its rate is reported against this
machine's fp32 matmul peak (a large square ``torch.mm``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks.runner.recbole import peak_rss_mb

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
MATRIX_DIR = REPO / "experiments" / "bench"


# -- machine ------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {"python": platform.python_version()}
    for name in ("torch", "pytorch_lightning", "numpy", "pandas", "hydra", "omegaconf", "recsys"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing or version-less package is reported as absent
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "gpu": gpu,
        "platform": platform.platform(),
        "versions": versions,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_peak(n: int = 4096, repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    """fp32 GFLOP/s of a large square matmul (best of ``repeats``): the machine's practical peak."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    out = torch.empty(n, n, device=dev)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": round(best, 4), "gflops": round(2 * n**3 / best / 1e9, 1)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


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
    from recsys.training.runs import datamodule_from_config, load_checkpoint, module_from_checkpoint
    from recsys.training.train import train

    out = Path(spec["output_dir"])
    overrides = list(spec["overrides"]) + [
        "+callbacks.bench_timer._target_=benchmarks.runner.bench.EpochTimer"
    ]
    cfg = compose(overrides, out)
    cuda = torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    # hydra instantiated the callback from the module ``benchmarks.runner.bench``, not this ``__main__``
    timer = importlib.import_module("benchmarks.runner.bench").EpochTimer.last
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
    ckpt = load_checkpoint(Path(metrics["best_checkpoint"]))
    module = module_from_checkpoint(ckpt)
    dev = torch.device("cuda" if cuda else "cpu")
    module.to(dev).eval()
    dm = datamodule_from_config(ckpt["hyper_parameters"]["config"])
    dm.configure_for(module.model, module.steps_per_call)
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
            _sync(dev)
            t0 = time.perf_counter()
            for b in batches:
                module.model.score(b.users)
            _sync(dev)
            score_s = min(score_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            values = module.evaluate(batches)
            _sync(dev)
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
    emb = getattr(module.model, "user_emb", None)
    if type(module.model).__name__ == "MF" and emb is not None:  # score = (B, d) @ (d, I)
        flops = 2.0 * n_users * dm.n_items * emb.embedding_dim
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
        "command": "python -m benchmarks.runner.bench " + " ".join(sys.argv[1:]),
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
    print(f"bench: wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}", flush=True)
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    from recsys.files import write_json

    report["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", report)
    (out_dir / "results.md").write_text(render_markdown(report))


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
            [sys.executable, "-m", "benchmarks.runner.bench", "_entry", str(spec_path)],
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


# -- report -------------------------------------------------------------------------------------
def _f(v: Any, nd: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{report['command']}` on {report['date']} from `{report['matrix']}`.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), "
        f"{m['memory_gb']} GiB RAM, GPU: {m['gpu'] or 'none'}",
        f"- load average (1, 5, 15 min) at start {m['load_avg']}, at end {report['load_avg_end']} "
        "(the CPU is shared; a load above the core count inflates every time below)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- environment: {report.get('env') or {}}",
        f"- fp32 matmul peak: {report['matmul_peak']['gflops']} GFLOP/s "
        f"(torch.mm of two {report['matmul_peak']['n']}² matrices, best of 5)",
        "",
        "## Results (test split, best validation checkpoint)",
        "",
        "| entry | NDCG@10 | Recall@10 | MRR@10 | epochs | train s/epoch | samples/s | eval s (test pass) "
        "| eval users/s | score GFLOP/s (% peak) | peak RSS MiB | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['name']} | {r.get('status')}: {str(r.get('error', ''))[:80]!r} |" + " |" * 10
            )
            continue
        t, e, te = r["timing"], r["eval"], r["test"]
        frac = e.get("score_local_peak_fraction", e.get("score_peak_fraction"))
        gf = f"{e['score_gflops']} ({100 * frac:.0f}%)" if frac is not None else "–"
        lines.append(
            f"| {r['name']} | {_f(te.get('ndcg@10'))} | {_f(te.get('recall@10'))} | {_f(te.get('mrr@10'))} "
            f"| {t.get('epochs')} | {_f(t.get('train_s_per_epoch'), 3)} | {_f(r.get('train_throughput'), 0)} "
            f"| {_f(e['full_pass_s'], 3)} | {_f(e['users_per_s'], 0)} | {gf} | {_f(r['peak_rss_mb'], 0)} "
            f"| {_f(r.get('peak_cuda_mb'), 0)} |"
        )
    lines += [
        "",
        "Columns: *train s/epoch* is the median training time of an epoch without its validation "
        "pass; *samples/s* counts training pairs (MF, NeuMF), user rows (Mult-VAE) or sequence "
        "windows (SASRec) per second; *eval s* is a full-ranking pass over every test user (score "
        "all items, mask seen items, top-k, metrics), best of 3; *score GFLOP/s* is the score "
        "computation alone for MF, a `(B, d) @ (d, I)` matmul, against the fp32 peak (measured again "
        "in the entry's process right after, since the load drifts); *peak RSS* "
        "is the entry's process (`VmHWM`: its own high-water mark), one process per entry. Closed-form models (EASE, "
        "popularity) have 0 epochs.",
        "",
    ]
    cmp_rows = [r for r in report["results"] if isinstance(r.get("recbole"), dict)]
    if cmp_rows:
        lines += render_comparison(cmp_rows)
    if report["skipped"]:
        lines += (
            ["## Skipped", ""] + [f"- {s['name']}: {s['reason']}" for s in report["skipped"]] + [""]
        )
    lines += ["## Commands", ""]
    for r in report["results"]:
        lines.append(f"- {r['name']}: `python -m recsys.cli.train {' '.join(r['overrides'])}`")
    if report.get("notes"):
        lines += ["", "## Notes", "", str(report["notes"]).strip()]
    return "\n".join(lines) + "\n"


def render_comparison(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Side by side with RecBole 1.2.1 (same split, same hyper-parameters)",
        "",
        "Ratios are RecBole / recsys (above 1: recsys is faster or smaller). Metric differences "
        "are recsys − RecBole on the test split.",
        "",
        "| entry | RecBole model | epochs (ours / RecBole) | s/epoch ours | s/epoch RecBole | epoch-time ratio (CPU time) "
        "| eval s ours | eval s RecBole | eval-time ratio | RSS ratio | NDCG@10 ours / RecBole (Δ) "
        "| Recall@10 ours / RecBole (Δ) | MRR@10 ours / RecBole (Δ) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rb = r["recbole"]
        if rb.get("status") != "ok":
            lines.append(
                f"| {r['name']} | failed: {str(rb.get('error', ''))[:100]!r} |" + " |" * 11
            )
            continue
        c = rb["ratios"]
        ours_cpu, rb_cpu = r["timing"].get("train_cpu_s_per_epoch"), rb.get("train_cpu_s_per_epoch")
        cpu = (
            f" (CPU s {ours_cpu:.3f} / {rb_cpu:.3f}: {rb_cpu / ours_cpu:.1f}×)"
            if ours_cpu and rb_cpu
            else ""
        )
        ours_vc, rb_vc = r["timing"].get("val_cpu_s_per_epoch"), rb.get("valid_cpu_s_mean")
        eval_cpu = (
            f" (val CPU s {ours_vc:.3f} / {rb_vc:.3f}: {rb_vc / ours_vc:.1f}×)"
            if ours_vc and rb_vc
            else ""
        )
        cells = []
        for k in ("ndcg@10", "recall@10", "mrr@10"):
            a, b = r["test"].get(k), rb["test"].get(k)
            cells.append(
                f"{_f(a)} / {_f(b)} ({a - b:+.4f})" if a is not None and b is not None else "–"
            )
        lines.append(
            f"| {r['name']} | {rb['model']} | {r['timing'].get('epochs')} / {rb.get('epochs_run')} "
            f"| {_f(r['timing'].get('train_s_per_epoch'), 3)} | {_f(rb.get('train_s_per_epoch'), 3)} "
            f"| {_f(c.get('epoch_time'), 1)}×{cpu} | {_f(r['eval']['full_pass_s'], 3)} "
            f"| {_f(rb.get('eval_s'), 3)} | {_f(c.get('eval_time'), 1)}×{eval_cpu} | {_f(c.get('rss'), 1)}× | "
            + " | ".join(cells)
            + " |"
        )
    notes = sorted({n for r in rows for n in r["recbole"].get("notes", [])})
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return lines


# -- scale ------------------------------------------------------------------------------------
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


def current_rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), MiB; None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


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
        timer = importlib.import_module("benchmarks.runner.bench").EpochTimer.last
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
        source = importlib.import_module(
            "benchmarks.runner.bench"
        ).SOURCE_STATS  # where the source ran
        progress(out, "loaded", **phases, **{f"source_{k}": v for k, v in source.items()})
        return split

    datamodule.prepare = timed_prepare
    out = Path(spec["output_dir"])
    cfg = compose(
        list(spec["overrides"])
        + [
            "+callbacks.bench_timer._target_=benchmarks.runner.bench.EpochTimer",
            "+callbacks.scale_progress._target_=benchmarks.runner.bench.ScaleProgress",
            f"+callbacks.scale_progress.out={out}",
        ],
        out,
    )
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    bench = importlib.import_module(
        "benchmarks.runner.bench"
    )  # the module the source and callback ran in
    timer = bench.EpochTimer.last
    source = dict(bench.SOURCE_STATS)
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
        "data.source=benchmarks.runner.bench.scale_source",
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
    ap = argparse.ArgumentParser(prog="python -m benchmarks.runner.bench scale")
    ap.add_argument(
        "--sizes", default="1M,20M,100M", help=f"comma-separated of {list(SCALE_SHAPES)}"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "scale.md"))
    ap.add_argument("--runs-dir", default=None)
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
                    "benchmarks.runner.bench",
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

    out_md = Path(args.out)
    write_json(
        out_md.with_suffix(".json"),
        {
            "machine": info,
            "command": "python -m benchmarks.runner.bench scale " + " ".join(argv),
            "results": rows,
        },
    )
    out_md.write_text(render_scale(info, rows, argv))
    print(f"scale: wrote {out_md}", flush=True)


def render_scale(info: dict[str, Any], rows: list[dict[str, Any]], argv: list[str]) -> str:
    lines = [
        "# Scaling: load, split, one MF epoch and full-ranking evaluation",
        "",
        f"Written by `python -m benchmarks.runner.bench scale {' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB RAM; "
        f"load average at start {info['load_avg']} (the CPU is shared with other jobs).",
        "",
        "Each size runs in its own process through the normal path (`recsys.training.train.train`): the "
        "synthetic source (`benchmarks.runner.bench.scale_source`, MovieLens-1M / MovieLens-20M / Netflix shapes),"
        " the data pipeline (encode ids, leave-one-out split by time), one MF-BPR epoch (batch "
        "131,072 pairs, d = 64), a validation pass during fit, then validation and test passes on "
        "the best checkpoint (full ranking over every item, seen items masked, users in chunks of "
        "4,096: no users × items matrix is ever built). *generate* is the synthetic source alone "
        "(in memory, no file parsing); *load + split* includes it plus id encoding, the split and "
        "its leakage audit.",
        "",
        "| size | users | items | train events | generate s (CPU s) | load + split s (CPU s) "
        "| RSS after load MiB | peak RSS load MiB | MF epoch s (CPU s) | peak RSS after epoch MiB "
        "| val pass s | test pass s | whole run s (CPU s) | peak RSS MiB | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['size']} | failed: {str(r.get('error', ''))[-120:]!r} |" + " |" * 13
            )
            continue
        d = r["data"]
        lines.append(
            f"| {r['size']} | {d['n_users']:,} | {d['n_items']:,} | {d['n_train']:,} "
            f"| {_f(r.get('source_s'), 1)} ({_f(r.get('source_cpu_s'), 1)}) "
            f"| {_f(r['load_split_s'], 1)} ({_f(r.get('load_split_cpu_s'), 1)}) "
            f"| {_f(r.get('rss_after_load_mb'), 0)} | {_f(r['load_split_peak_rss_mb'], 0)} "
            f"| {_f(r['train_epoch_s'], 1)} ({_f(r.get('train_epoch_cpu_s'), 1)}) "
            f"| {_f(r.get('peak_rss_after_train_mb'), 0)} | {_f(r['val_pass_s'], 1)} "
            f"| {_f(r['test_pass_s'], 1)} | {_f(r['process_wall_s'], 1)} ({_f(r.get('process_cpu_s'), 1)}) "
            f"| {_f(r['peak_rss_mb'], 0)} | {r['load_avg_start']} |"
        )
    lines += ["", "Commands (one process per size):", ""]
    for r in rows:
        lines.append(f"- {r['size']}: `python -m recsys.cli.train {' '.join(r['overrides'])}`")
    return "\n".join(lines) + "\n"


# -- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_entry"]:  # child: one entry
        spec = json.loads(Path(argv[1]).read_text())
        torch.set_num_threads(int(os.environ.get("RECSYS_BENCH_THREADS", torch.get_num_threads())))
        res = run_entry(spec)
        Path(spec["output_dir"], "bench_result.json").write_text(json.dumps(res, indent=2))
        return
    if argv[:1] == ["_scale"]:  # child: one scale point
        spec = json.loads(Path(argv[1]).read_text())
        Path(spec["output_dir"], "scale_result.json").write_text(
            json.dumps(run_scale_point(spec), indent=2)
        )
        return
    if argv[:1] == ["render"]:  # re-render results.md from a results.json
        path = Path(argv[1])
        path.with_suffix(".md").write_text(render_markdown(json.loads(path.read_text())))
        return
    if argv[:1] == ["scale"]:
        scale_main(argv[1:])
        return
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.runner.bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="experiments/bench/quick.yaml")
    ap.add_argument("--matrix", help="a matrix YAML (default: experiments/bench/full.yaml)")
    ap.add_argument(
        "--out",
        default=None,
        help="where results.md/.json go (default: benchmarks/; --quick: outputs/bench-quick/)",
    )
    ap.add_argument("--runs-dir", help="run directories (default: outputs/bench/<date_time>)")
    ap.add_argument("--only", help="comma-separated entry names")
    ap.add_argument("--compare", choices=["recbole"], help="also run RecBole on the same data")
    ap.add_argument("--recbole-python", default=None, help="python of the RecBole venv")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per entry")
    ap.add_argument("--peak-n", type=int, default=4096, help="matmul size for the fp32 peak")
    run_matrix(ap.parse_args(argv))


if __name__ == "__main__":
    main()
