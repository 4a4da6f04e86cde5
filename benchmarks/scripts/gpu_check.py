"""The GPU check: the ``gpu``-marked tests, then a short GPU benchmark, in one command.

    make gpu-check     # = python3 benchmarks/scripts/gpu_check.py (.venv's python if present)

On a machine without a CUDA device it stops at once with one line and exit status 3. On one GPU
it takes about 3-5 minutes (it stops itself after ``--budget`` seconds, 450 by default) and writes
``gpu_check.json`` and ``gpu_check.md`` (a short table) under ``--out``
(default ``outputs/gpu-check/<date_time>/``); benchmarks/gpu.md says where the numbers go.

1. **Setup, offline.** GPU machines here have a CUDA build of PyTorch, Lightning, pandas, pyarrow,
   scipy, scikit-learn, onnx and TensorBoard, but no Hydra, OmegaConf or antlr4 and no network.
   Those three come from the wheels in ``--wheels`` (``pip install --no-index --no-deps --target
   <temporary folder>``, put first on the path: an antlr4 already there that OmegaConf cannot
   use is shadowed), and recsys runs from this checkout (the repository root on the path, what
   ``pip install --no-deps -e .`` gives without its build step): nothing replaces or changes the
   machine's torch. On a machine with network and the datasets, ``make gpu-prep`` (= ``make
   gpu-wheels gpu-data``) builds the wheels into ``.gpu-wheels/`` and copies Amazon Beauty and
   MovieLens-1M (~3 MB) from ``RECSYS_DATA_DIR`` into ``.gpu-data/``. Both folders are
   git-ignored: a tool that copies the working tree to a GPU machine must be told to take them
   (the device tool here: ``carry=[".gpu-wheels", ".gpu-data"]``).
2. **Tests.** ``pytest -m gpu`` (tests/integration/test_gpu.py and the other ``gpu`` tests: CPU and
   GPU scores and metrics on the same weights for MF, Mult-VAE and SASRec, bf16 against fp32,
   an artifact exported from a CUDA run scored on the CPU), each test's outcome recorded.
3. **Benchmark** (data from ``--data``, no download): the fp32 and bf16 matmul peak of this GPU;
   a SASRec full-softmax (``sasrec_ce_beauty``) training epoch on Amazon Beauty in fp32 and in
   bf16-mixed; a BPR-MF (``bpr_ml1m``) epoch on MovieLens-1M; full-ranking evaluation passes
   (users/s; for MF the score matmul's GFLOP/s as a share of the fp32 peak measured in the same
   run); the peak CUDA memory of each. An epoch is timed after a first one (CUDA start-up,
   cuBLAS heuristics), validation off.

``--device cpu`` runs every step on the CPU instead (the tests with the CPU standing in for the
GPU, the benchmark on a few batches): a check of this script, whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NO_DEVICE = 3  # exit status: no CUDA device (or no torch)
WHEEL_PACKAGES = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
}


def fail(message: str, status: int) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def log(message: str) -> None:
    print(f"gpu-check: {message}", flush=True)


# -- 1. setup ---------------------------------------------------------------------------------
def check_device(device: str):
    try:
        import torch
    except ImportError:
        fail("no CUDA device: PyTorch is not installed in this interpreter", NO_DEVICE)
    if device == "cuda" and not torch.cuda.is_available():
        fail(
            f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "nothing was run",
            NO_DEVICE,
        )
    return torch


def setup(wheels: Path) -> dict[str, Any]:
    """Hydra, OmegaConf and antlr4 from ``wheels``, installed into a temporary folder put first on
    the path (nothing in the machine's environment changes; a different antlr4 there, which
    OmegaConf cannot use, is shadowed), and recsys from this checkout (the repository root on
    the path)."""
    done: dict[str, Any] = {"installed_wheels": []}
    paths = [str(REPO)]
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    names = tuple(n.replace("-", "_") + "-" for n in WHEEL_PACKAGES.values())
    wanted = [f for f in files if f.name.startswith(names)]
    if wanted:
        site = tempfile.mkdtemp(prefix="recsys-gpu-site-")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        subprocess.run(
            [*pip, "--root-user-action=ignore", "--target", site, *map(str, wanted)], check=True
        )
        done["installed_wheels"] = [f.name for f in wanted]
        paths.append(site)
    for p in reversed(paths):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*paths, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    importlib.invalidate_caches()
    try:
        import hydra  # noqa: F401
        from omegaconf import OmegaConf

        assert OmegaConf.create({"a": 1, "b": "${a}"}).b == 1  # an interpolation: needs antlr4
    except Exception as e:
        fail(
            f"Hydra/OmegaConf unusable here ({type(e).__name__}: {str(e)[:120]}); put their wheels "
            f"in {wheels}/ (make gpu-wheels on a machine with network) and carry that folder",
            4,
        )
    import recsys

    if Path(recsys.__file__).resolve().parent.parent != REPO:
        fail(f"recsys imports from {recsys.__file__}, not from this checkout", 4)
    return done


# -- 2. tests ---------------------------------------------------------------------------------
def run_tests(out: Path, device: str, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu``, each test's outcome and time from its JUnit XML (from its verbose log
    when it had to be stopped)."""
    xml, log_path = out / "gpu_tests.xml", out / "gpu_tests.log"
    env = dict(os.environ)
    if device == "cpu":
        env["RECSYS_GPU_TESTS_ON"] = "cpu"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={xml}", "tests"]
    t0 = time.perf_counter()
    with log_path.open("w") as f:
        try:
            status: int | str = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    text = log_path.read_text(errors="replace")
    tests = []
    if xml.is_file() and status != "timeout":
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, detail = "passed", ""
            for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                node = case.find(tag)
                if node is not None:
                    outcome, detail = name, (node.get("message") or "").split("\n")[0][:300]
                    break
            test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            row = {
                "test": test,
                "outcome": outcome,
                "seconds": round(float(case.get("time") or 0), 1),
            }
            tests.append({**row, **({"detail": detail} if detail else {})})
    else:  # stopped: what the verbose log says of the tests that finished
        for line in text.splitlines():
            parts = line.split()
            if (
                len(parts) >= 2
                and "::" in parts[0]
                and parts[1] in ("PASSED", "FAILED", "ERROR", "SKIPPED")
            ):
                outcome = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error"}.get(
                    parts[1], "skipped"
                )
                tests.append({"test": parts[0].split("/")[-1], "outcome": outcome})
    counts = {
        k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")
    }
    return {
        "exit_status": status,
        "log_tail": text[-1500:],
        "seconds": round(time.perf_counter() - t0, 1),
        "counts": counts,
        "tests": tests,
    }


# -- 3. benchmark -----------------------------------------------------------------------------
def peak_flops(torch, dev, dtype, n: int) -> float:
    """TFLOP/s of an n x n x n matmul in ``dtype`` (best of 5; fp32 with TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        sync(torch, dev)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(torch, dev)
        best = min(best, time.perf_counter() - t0)
    del a, b
    return round(2 * n**3 / best / 1e12, 2)


def sync(torch, dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_mib(torch, dev) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def reset_peak(torch, dev) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def train_epochs(torch, dev, overrides: list[str], quick: bool) -> dict[str, Any]:
    """Two training epochs (validation off) through recsys-train's loop; the second is timed."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from benchmarks.runner.matrix import compose
    from recsys.training.runs import datamodule_from_config, module_for

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.samples: list[int] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            sync(torch, dev)
            self.t0 = time.perf_counter()
            self.samples.append(0)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            for b in batch if isinstance(batch, list) else [batch]:
                self.samples[-1] += len(b.user) if hasattr(b, "user") else 0

        def on_train_epoch_end(self, trainer, module) -> None:
            sync(torch, dev)
            self.seconds.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.to_container(compose(overrides, Path(tmp)), resolve=True)
        pl.seed_everything(cfg["seed"], verbose=False)
        dm = datamodule_from_config(cfg)
        dm.setup()
        module = module_for(cfg, dm)
        timer = Timer()
        reset_peak(torch, dev)
        trainer = pl.Trainer(
            accelerator="gpu" if dev.type == "cuda" else "cpu",
            devices=1,
            precision=cfg["trainer"].get("precision", "32-true"),
            max_epochs=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            limit_train_batches=5 if quick else 1.0,
            callbacks=[timer],
        )
        trainer.fit(module, datamodule=dm)
        out = {
            "overrides": overrides,
            "precision": cfg["trainer"].get("precision"),
            "epoch_s": round(timer.seconds[-1], 3),
            "first_epoch_s": round(timer.seconds[0], 3),
            "samples_per_epoch": timer.samples[-1],
            "samples_per_s": round(timer.samples[-1] / timer.seconds[-1], 1),
            "peak_cuda_mib": peak_mib(torch, dev),
        }
        out["eval"] = eval_pass(torch, dev, module, dm)
        return out


def eval_pass(torch, dev, module, dm) -> dict[str, Any]:
    """A full-ranking pass over the test users (score, mask, top-k, metrics), best of 3."""
    from benchmarks.runner.matrix import measure_eval

    module = module.to(dev).eval()
    reset_peak(torch, dev)
    m = measure_eval(module, dm, dev)
    out = {
        k: m[k] for k in ("users", "items", "batch_size", "score_s", "full_pass_s", "users_per_s")
    }
    if "score_gflops" in m:
        out["score_tflops"] = round(m["score_gflops"] / 1e3, 3)
    out["ndcg@10"] = round(m["test_check"].get("ndcg@10", float("nan")), 4)
    out["peak_cuda_mib"] = peak_mib(torch, dev)
    return out


def benchmark(torch, dev, data: Path, quick: bool, deadline: float) -> dict[str, Any]:
    os.environ["RECSYS_DATA_DIR"] = str(data)
    common = ["data.download=false", "trainer.enable_progress_bar=false", "~logger"]
    common.append(f"trainer.accelerator={'gpu' if dev.type == 'cuda' else 'cpu'}")
    res: dict[str, Any] = {}
    if dev.type == "cuda":
        res["matmul_peak_tflops"] = {
            "fp32": peak_flops(torch, dev, torch.float32, 8192),
            "bf16": peak_flops(torch, dev, torch.bfloat16, 8192),
        }
    runs = {
        "sasrec_beauty_fp32": ["experiment=sasrec_ce_beauty", "trainer.precision=32-true"],
        "sasrec_beauty_bf16": ["experiment=sasrec_ce_beauty", "trainer.precision=bf16-mixed"],
        "bpr_ml1m": ["experiment=bpr_ml1m", "seed=0"],
    }
    for name, overrides in runs.items():
        if time.monotonic() > deadline:
            res[name] = {"skipped": "out of the time budget"}
            continue
        log(f"benchmark {name}")
        try:
            res[name] = train_epochs(torch, dev, [*overrides, *common], quick)
        except Exception as e:  # record and go on: one broken entry must not hide the others
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    peak = res.get("matmul_peak_tflops", {}).get("fp32")
    mf_eval = res.get("bpr_ml1m", {}).get("eval", {})
    if peak and "score_tflops" in mf_eval:
        mf_eval["score_share_of_fp32_peak"] = round(mf_eval["score_tflops"] / peak, 3)
    return res


# -- report -----------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"GPU check {report['date']}: {m.get('gpu')} · torch {m['torch']} (CUDA {m['cuda']}) · "
        f"{report['seconds']:.0f} s",
        "",
    ]
    t = report.get("tests", {})
    if t:
        c = t["counts"]
        lines += [
            f"Tests (`pytest -m gpu`): {c['passed']} passed, {c['failed']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped ({t['seconds']} s)",
            "",
        ]
        for case in t["tests"]:
            if case["outcome"] in ("failed", "error"):
                lines.append(f"- {case['outcome']}: `{case['test']}` {case.get('detail', '')}")
        if t["exit_status"] not in (0, 5):
            lines += [f"pytest: exit status {t['exit_status']}; its log ends:", "", "```"]
            lines += [*t["log_tail"].splitlines()[-6:], "```"]
        lines.append("")
    b = report.get("benchmark", {})
    if b:
        peak = b.get("matmul_peak_tflops", {})
        if peak:
            lines += [
                f"Matmul peak 8192³: fp32 {peak['fp32']} TFLOP/s, bf16 {peak['bf16']} TFLOP/s",
                "",
            ]
        lines += [
            "| run | epoch s | samples/s | peak CUDA MiB (train) | eval users/s | score TFLOP/s "
            "(share of fp32 peak) | peak CUDA MiB (eval) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in b.items():
            if name == "matmul_peak_tflops":
                continue
            if "epoch_s" not in r:
                lines.append(f"| {name} | {r.get('error') or r.get('skipped')} | | | | | |")
                continue
            e = r["eval"]
            share = e.get("score_share_of_fp32_peak")
            score = f"{e['score_tflops']} ({share:.1%})" if share is not None else "–"
            lines.append(
                f"| {name} | {r['epoch_s']} | {r['samples_per_s']:,.0f} | {r['peak_cuda_mib']} | "
                f"{e['users_per_s']:,.0f} | {score} | {e['peak_cuda_mib']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python3 benchmarks/scripts/gpu_check.py")
    ap.add_argument("--wheels", default=str(REPO / ".gpu-wheels"))
    ap.add_argument("--data", default=str(REPO / ".gpu-data"))
    ap.add_argument("--out", default=None, help="default: outputs/gpu-check/<date_time>/")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    start = time.monotonic()
    torch = check_device(args.device)  # before anything else: no GPU, one line, exit 3
    dev = torch.device(args.device)
    out = Path(args.out or REPO / "outputs" / "gpu-check" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device}
    report["setup"] = setup(Path(args.wheels))
    report["machine"] = {
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
    quick = args.device == "cpu"
    if not args.skip_tests:
        log("pytest -m gpu")
        budget = max(60.0, args.budget * 0.55 - (time.monotonic() - start))
        report["tests"] = run_tests(out, args.device, budget)
        log(f"tests: {report['tests']['counts']}")
    if not args.skip_bench:
        deadline = start + args.budget - 60
        report["benchmark"] = benchmark(torch, dev, Path(args.data).resolve(), quick, deadline)
    report["seconds"] = round(time.monotonic() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    print(md)
    log(f"results in {out}/gpu_check.json and gpu_check.md")
    tests = report.get("tests")
    failed = tests is not None and (
        tests["counts"]["failed"] + tests["counts"]["error"] > 0
        or tests["exit_status"] not in (0, 5)
    )
    broken = any("error" in r for r in report.get("benchmark", {}).values() if isinstance(r, dict))
    sys.exit(1 if failed or broken else 0)


if __name__ == "__main__":
    main()
