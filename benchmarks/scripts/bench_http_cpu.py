"""Server CPU time per request over real HTTP: recsys-serve against the floor app, one request at
a time.

Starts the server (``recsys-serve <artifact>`` as ``bench_serve`` starts it, or the floor app),
sends ``--calls`` requests one after another on one keep-alive connection (the same requests
``bench_serve`` draws), and divides the server process's CPU time (user + system, every thread,
from /proc/<pid>/stat) by the number of requests. CPU time rather than latency, so other jobs on
a shared machine count much less; one request at a time, so every request is a batch of one.
Servers and client are pinned to different cores where there are two (``--pin``). Rounds
alternate the servers, so the host's drift hits both::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_http_cpu outputs/bench-serve/sasrec

Run it from a checkout (the working directory's ``recsys`` is the one served) to compare commits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.scripts.bench_serve import (
    FLOOR_APP,
    SCENARIOS,
    free_port,
    load_avg,
    make_requests,
    proc_cpu_s,
)


def start(label: str, artifact: Path, cores: set[int] | None) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    if label == "floor":
        port = free_port()
        cmd = [sys.executable, str(FLOOR_APP), "--port", str(port), "--log-level", "warning"]
    else:
        port = 0
        cmd = [sys.executable, "-m", "recsys.cli.serve", str(artifact), "--port", "0"]
        cmd += ["--workers", "1", "--threads", "1", "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=pin
    )
    stream = proc.stdout if label == "floor" else proc.stderr
    deadline = time.time() + 180
    while port == 0 or label == "floor":
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{label} exited with {proc.wait()}")
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
        if time.time() > deadline:
            raise RuntimeError(f"{label}: no serving line")
    while True:  # until /health answers
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                c.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
        if time.time() > deadline:
            raise RuntimeError(f"{label}: /health never answered")


def drive(port: int, requests: list[dict], n: int, offset: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for i in range(n):
        r = requests[(offset + i) % len(requests)]
        conn.request(r["method"], r["path"], body=r.get("body"), headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status} for {r['path']}")
    conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--calls", type=int, default=2000, help="requests per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    artifact = Path(args.artifact)
    meta = json.loads((artifact / "artifact.json").read_text())
    scenario = SCENARIOS["sasrec" if meta.get("supports_history") else "mf"]
    requests = make_requests(scenario, artifact, 4096, args.seed)
    usable = sorted(os.sched_getaffinity(0))
    server_cores = {usable[0]} if args.pin and len(usable) > 1 else None
    if server_cores:
        os.sched_setaffinity(0, set(usable[1:]))
    out: dict[str, list[float]] = {"recsys": [], "floor": []}
    loads = [load_avg()]
    for r in range(args.rounds):
        for label in out:
            proc, port = start(label, artifact, server_cores)
            try:
                drive(port, requests, 200, 0)  # warm
                cpu = proc_cpu_s(proc.pid)
                drive(port, requests, args.calls, r * args.calls)
                out[label].append((proc_cpu_s(proc.pid) - cpu) / args.calls * 1e3)
            finally:
                proc.terminate()
                proc.wait(30)
        loads.append(load_avg())
    print(
        json.dumps(
            {
                "artifact": str(artifact),
                "endpoint": requests[0]["method"] + " " + requests[0]["path"].split("?")[0],
                "calls": args.calls,
                "server_ms_cpu_per_request": {k: [round(x, 3) for x in v] for k, v in out.items()},
                "median": {k: round(float(np.median(v)), 3) for k, v in out.items()},
                "load_avg": loads,
            }
        )
    )


if __name__ == "__main__":
    main()
