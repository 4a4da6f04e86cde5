"""The machine a benchmark runs on: CPU, memory, versions, the fp32 matmul peak, process memory."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

# defined beside the RecBole child, which runs that file alone in RecBole's interpreter; both
# sides of a comparison measure memory with this one function
from benchmarks.runner.recbole import peak_rss_mb

__all__ = ["cpu_name", "current_rss_mb", "machine_info", "matmul_peak", "peak_rss_mb", "sync"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and package versions."""
    cpu = cpu_name()
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
        sync(dev)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": round(best, 4), "gflops": round(2 * n**3 / best / 1e9, 1)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def current_rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), MiB; None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
