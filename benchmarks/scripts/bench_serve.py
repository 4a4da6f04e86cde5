"""Load benchmark of ``recsys-serve``: fixed request rates, open loop, latency percentiles.

    make bench-serve                                   # = .venv/bin/python -m benchmarks.scripts.bench_serve
    make bench-serve ARGS="--duration 5 --rates mf=250,500 sasrec=200"
    make bench-serve ARGS="--passes 4"                 # recsys and floor alternated, pooled
    python -m benchmarks.scripts.bench_serve --mf-artifact <dir> --sasrec-artifact <dir>

Scenarios (benchmarks/serving.md holds the numbers and the targets):

- ``mf``: an MF artifact (embedding size 256, as ``bpr_ml1m``) on Last.fm hetrec-2011 (17,632
  artists, the largest catalogue offline), ``GET /v1/recommend`` for random known users, 500/s;
- ``sasrec``: a SASRec artifact (``sasrec_ce_beauty``'s size) on Amazon Beauty,
  ``POST /v1/recommend/history`` with histories drawn from real users (a random suffix of 1-50
  of a user's items, mapped to external ids), 200/s;
- the floor: ``floor_app.py`` (the same routes on the same stack, answering a constant) at the
  same rates with the same requests, in turn with the real server.

Each (server, rate) pair is one run: a client process (aiohttp, keep-alive, a pool of
``--pool`` connections) releases requests at fixed times, one every 1/rate seconds
(``--arrivals poisson`` for seeded Poisson arrivals), whether or not earlier ones returned: open
loop. A timer thread sleeps to each request's scheduled time and hands it to the event loop;
latency runs from the *scheduled* time to the last byte of the response, so a server that stalls
or a client that falls behind shows in the tail (no coordinated omission). The first
``--warmup`` seconds are left out. ``--passes N`` splits the measured time into N runs per
server, alternated with the floor's (recsys, floor, floor, recsys, ...), and the table pools the
requests of each server's passes: the p50 ratio then compares two servers measured over the
same stretch of the machine's load, not one 20 s run after another (the JSON keeps every pass). While the client runs, this process samples the server's
VmRSS (/proc/<pid>/status) every 0.1 s; before and after, it reads the server's CPU time, how
busy the server's core was (/proc/stat: what other processes took) and, from recsys-serve's
``/metrics``, the micro-batch sizes and scoring time.

Servers listen on 127.0.0.1 at free ports (bind port 0), one uvicorn process each; with 2+ cores
(``--pin``, the default) the servers run on one core and the client (and this process) on
another. Servers are stopped (SIGTERM, SIGKILL after 10 s) on every exit path.

Without ``--mf-artifact`` / ``--sasrec-artifact`` the artifacts are built once under ``--work``
(default ``outputs/bench-serve/``; reused by later runs, ``--rebuild`` to redo) by a short
``recsys-train`` (``trainer.max_epochs=2``: latency depends on the model's shape, not its
quality) and ``recsys-export``, from the datasets under ``$RECSYS_DATA_DIR``; a scenario whose
dataset is absent is skipped with one line. One JSON per run (every scenario's numbers, the
commands, the machine) goes to ``--out`` (default ``benchmarks/logs/<date>-serving/``), and a
table with a verdict per target row is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runner.machine import cpu_name

ROOT = Path(__file__).resolve().parents[2]
FLOOR_APP = Path(__file__).with_name("floor_app.py")
K = 10
STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Target:
    """What a scenario must meet: p99 at ``rate``, no errors, p50 within ``p50_factor`` x floor."""

    rate: float
    p99_ms: float
    p50_factor: float = 2.0


@dataclass(frozen=True)
class Scenario:
    """A load scenario: the artifact it needs, how to build one, the request it sends."""

    name: str
    data: str  # configs/data/<data>.yaml: the dataset an artifact is built from
    train_overrides: tuple[str, ...]
    endpoint: str  # "recommend" (GET, a known user) | "history" (POST, a history of items)
    target: Target


SCENARIOS = {
    "mf": Scenario(
        name="mf",
        data="lastfm",
        # bpr_ml1m's embedding size; no k-core, so the whole 17,632-artist catalogue is scored
        train_overrides=("data=lastfm", "model=mf", "model.embedding_size=256"),
        endpoint="recommend",
        target=Target(rate=500, p99_ms=10),
    ),
    "sasrec": Scenario(
        name="sasrec",
        data="amazon-beauty",
        train_overrides=("experiment=sasrec_ce_beauty",),
        endpoint="history",
        target=Target(rate=200, p99_ms=30),
    ),
}
TRAIN_COMMON = ("trainer.max_epochs=2", "trainer.enable_progress_bar=false")


# ---------------------------------------------------------------- machine, paths, processes


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, memory, load, versions and the checkout: what a reader needs to compare."""
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError):
        pass
    dists = ("torch", "numpy", "fastapi", "starlette", "uvicorn", "pydantic", "aiohttp")
    versions = {"python": platform.python_version()} | {d: _version(d) for d in dists}
    # uvicorn picks uvloop and httptools when installed: they change the floor
    versions |= {d: _version(d) for d in ("uvloop", "httptools", "orjson", "recsys")}
    status = _git("status", "--porcelain", "--", "recsys")
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "recsys_uncommitted_changes": bool(status) if status is not None else None,
    }


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kb(pid: int, field: str) -> int | None:
    """``field`` (VmRSS, VmHWM) of /proc/<pid>/status in kB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def core_busy_s() -> dict[int, float]:
    """Busy CPU seconds of each core since boot (/proc/stat: all but idle and iowait)."""
    busy: dict[int, float] = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                t = [int(x) for x in ticks[:8]]
                busy[int(name[3:])] = (sum(t) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return busy


def _pinner(cores: set[int] | None):
    """A preexec_fn putting the child on ``cores`` before it starts (its threads inherit)."""
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


class Portable:
    """Rewrites machine paths in what goes into the repository: the checkout becomes ``.``, the
    data root ``<datasets>``, the temporary folder ``<tmp>``."""

    def __init__(self, data_root: str | None) -> None:
        self.pairs = [(str(ROOT) + "/", ""), (str(ROOT), ".")]
        if data_root and os.path.isabs(data_root):
            self.pairs.insert(0, (data_root.rstrip("/"), "<datasets>"))
        self.pairs.append((tempfile.gettempdir().rstrip("/") + "/", "<tmp>/"))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            for old, new in self.pairs:
                value = value.replace(old, new)
            return value
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def _command_line(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


class Server:
    """A server process on 127.0.0.1: started pinned, polled until /health answers, stopped."""

    def __init__(self, label: str, cmd: list[str], port: int, log: Path, cores: set[int] | None):
        self.label, self.cmd, self.port, self.log_path = label, cmd, port, log
        self.url = f"http://127.0.0.1:{port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pinner(cores),
            start_new_session=True,  # a Ctrl-C reaches this process only: stop() ends the server
        )
        self.pid = self.proc.pid
        self.health: dict[str, Any] | None = None
        self.ready_s: float | None = None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /health`` until 200; raise with the log's tail if the process exits first."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
                raise RuntimeError(
                    f"{self.label} exited with status {self.proc.returncode} before it was "
                    f"ready: {last}\n{tail}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.health = json.loads(r.read())
                        self.ready_s = round(time.monotonic() - t0, 2)
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label}: no answer on /health after {timeout:.0f} s")

    def serving_line(self) -> str | None:
        """The line the server printed when ready (``serving ...``), if any."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("serving "):
                return line
        return None

    def log_tail(self, lines: int = 20) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------- artifacts and requests


def _data_folder(data: str) -> str:
    text = (ROOT / "configs" / "data" / f"{data}.yaml").read_text()
    m = re.search(r"^folder:\s*(\S+)", text, flags=re.M)
    if not m:
        raise RuntimeError(f"configs/data/{data}.yaml names no folder")
    return m.group(1)


def _bin(name: str) -> str | None:
    """A console script of this interpreter's environment (``.venv/bin/<name>``), else PATH's."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def build_artifact(sc: Scenario, work: Path, data_root: str, rebuild: bool) -> dict[str, Any]:
    """Train ``sc``'s model briefly and export it to ``work/<name>``, unless already there.

    Returns ``{"path", "built", "commands"}``, or ``{"skip": reason}`` when the dataset is absent.
    """
    out = work / sc.name
    run = work / f"train-{sc.name}"
    train_cmd = [_bin("recsys-train") or "recsys-train", *sc.train_overrides, *TRAIN_COMMON]
    train_cmd.append(f"hydra.run.dir={run}")
    export_cmd = [_bin("recsys-export") or "recsys-export", f"run={run}", f"out={out}"]
    commands = [_command_line(train_cmd), _command_line(export_cmd)]
    if (out / "artifact.json").exists() and not rebuild:
        return {"path": str(out), "built": False, "commands": commands}
    folder = Path(data_root) / _data_folder(sc.data)
    if not folder.is_dir():
        return {"skip": f"dataset {sc.data} absent: no {folder} (set RECSYS_DATA_DIR)"}
    env = dict(os.environ, RECSYS_DATA_DIR=data_root)
    env.setdefault("OMP_NUM_THREADS", "1")
    work.mkdir(parents=True, exist_ok=True)
    for cmd, log in ((train_cmd, run.with_suffix(".log")), (export_cmd, out.with_suffix(".log"))):
        print(f"[{sc.name}] {_command_line(cmd)}  (log: {log})", flush=True)
        with open(log, "wb") as f:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"[{sc.name}] exit {rc.returncode}: {cmd[0]}\n{tail}")
    return {"path": str(out), "built": True, "commands": commands}


def artifact_facts(path: Path) -> dict[str, Any]:
    """Model, sizes and digest of an artifact, from its manifest (no torch needed)."""
    meta = json.loads((path / "artifact.json").read_text())
    facts: dict[str, Any] = {
        "path": str(path),
        "model": meta.get("model", {}).get("_target_"),
        "num_users": meta.get("num_users"),
        "num_items": meta.get("num_items"),
    }
    model = meta.get("model", {})
    for key in ("embedding_size", "hidden_size", "n_layers", "n_heads", "inner_size", "max_len"):
        if key in model:
            facts[key] = model[key]
    sig = path / "artifact.sig"
    if sig.exists():
        facts["digest"] = json.loads(sig.read_text()).get("manifest_sha256")
    return facts


def make_requests(sc: Scenario, artifact: Path, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` requests drawn from the artifact's users (seeded): method, path and JSON body."""
    rng = np.random.default_rng(seed)
    ids = np.load(artifact / "ids.npz", allow_pickle=False)
    if sc.endpoint == "recommend":
        users = ids["user_ids"]
        picks = users[rng.integers(0, len(users), n)]
        return [
            {
                "method": "GET",
                "path": f"/v1/recommend?user={urllib.parse.quote(str(u), safe='')}"
                f"&k={K}&exclude_seen=true",
            }
            for u in picks.tolist()
        ]
    hist = np.load(artifact / "history.npz", allow_pickle=False)
    indptr, indices, item_ids = hist["indptr"], hist["indices"], ids["item_ids"]
    lengths = np.diff(indptr)
    users = np.flatnonzero(lengths > 0)
    out = []
    for u in users[rng.integers(0, len(users), n)].tolist():
        end = int(indptr[u + 1])
        length = int(rng.integers(1, min(50, int(lengths[u])) + 1))
        items = [str(x) for x in item_ids[indices[end - length : end]].tolist()]
        body = json.dumps({"items": items, "k": K}, separators=(",", ":"))
        out.append({"method": "POST", "path": "/v1/recommend/history", "body": body})
    return out


def preflight(url: str, req: dict[str, str]) -> dict[str, Any]:
    """One request before the load: status and whether the answer holds k items and scores."""
    data = req["body"].encode() if "body" in req else None
    r = urllib.request.Request(url + req["path"], data=data, method=req["method"])
    if data is not None:
        r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError as e:
        return {"ok": False, "error": repr(e)}
    try:
        answer = json.loads(body)
    except ValueError:
        return {"ok": False, "status": status, "body": body[:300].decode(errors="replace")}
    ok = (
        status == 200
        and isinstance(answer, dict)
        and len(answer.get("items", [])) == K
        and len(answer.get("scores", [])) == K
    )
    return {"ok": ok, "status": status, "answer": answer if ok else str(answer)[:300]}


SCRAPED = ("recsys_batch_size", "recsys_batch_seconds", "recsys_request_duration_seconds")


def scrape(url: str) -> dict[str, float]:
    """``<name>_sum`` and ``<name>_count`` of the SCRAPED histograms in ``GET /metrics`` (summed
    over labels); empty when the server has no such route (the floor)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in SCRAPED:
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                pass
    return out


def batching(before: dict[str, float], after: dict[str, float]) -> dict[str, Any] | None:
    """Mean micro-batch size and scoring time per call over a run, from two scrapes."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    calls = delta("recsys_batch_size_count")
    if not after or calls <= 0:
        return None
    requests = delta("recsys_request_duration_seconds_count")
    return {
        "scoring_calls": int(calls),
        "mean_batch_size": round(delta("recsys_batch_size_sum") / calls, 2),
        "mean_scoring_call_ms": round(1e3 * delta("recsys_batch_seconds_sum") / calls, 3),
        "mean_in_server_ms": round(1e3 * delta("recsys_request_duration_seconds_sum") / requests, 3)
        if requests > 0
        else None,
    }


# ---------------------------------------------------------------- the load client (own process)


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Open-loop load of ``spec`` against one server; returns the summary of the run."""
    import aiohttp
    from yarl import URL

    rate, warmup, duration = spec["rate"], spec["warmup"], spec["duration"]
    n = math.ceil(rate * (warmup + duration))
    if spec["arrivals"] == "poisson":
        rng = np.random.default_rng(spec["seed"])
        gaps = rng.exponential(1.0 / rate, n)
        offsets = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    else:
        offsets = np.arange(n) / rate
    reqs = [
        (
            r["method"],
            URL(spec["url"] + r["path"], encoded=True),
            r["body"].encode() if "body" in r else None,
        )
        for r in spec["requests"]
    ]
    json_header = {"Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    results: list[tuple[float, float, float, int, str]] = []
    tasks: list[asyncio.Task] = []
    released = loop.create_future()

    connector = aiohttp.TCPConnector(limit=spec["pool"], limit_per_host=spec["pool"])
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, t_sched: float) -> None:
            method, url, body = reqs[i % len(reqs)]
            t_send = time.monotonic()
            status, error = -1, ""
            try:
                headers = json_header if body is not None else None
                async with session.request(method, url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except Exception as e:  # transport errors and timeouts are counted, not raised
                error = type(e).__name__
            results.append((t_sched, t_send, time.monotonic(), status, error))

        def launch(i: int, t_sched: float) -> None:
            tasks.append(loop.create_task(one(i, t_sched)))

        def release(t0: float) -> None:
            # a thread sleeps to each scheduled time (clock_nanosleep: ~0.1 ms) and wakes the
            # loop; the loop's own timers round to whole milliseconds
            for i, off in enumerate(offsets.tolist()):
                wait = t0 + off - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                loop.call_soon_threadsafe(launch, i, t0 + off)
            loop.call_soon_threadsafe(released.set_result, None)

        t0 = time.monotonic() + 0.05
        cpu0 = time.process_time()
        threading.Thread(target=release, args=(t0,), daemon=True).start()
        await released
        await asyncio.gather(*tasks)
        client_cpu = time.process_time() - cpu0
    return _summarize(results, t0 + warmup) | {
        "client_cpu_s": round(client_cpu, 2),
        "requests_sent": len(results),
    }


def _pct(x: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(x, q)), 3) if len(x) else None


def _latency(lat: np.ndarray) -> dict[str, float | None]:
    return {
        "p50": _pct(lat, 50),
        "p90": _pct(lat, 90),
        "p95": _pct(lat, 95),
        "p99": _pct(lat, 99),
        "p99.9": _pct(lat, 99.9),
        "max": round(float(lat.max()), 3) if len(lat) else None,
        "mean": round(float(lat.mean()), 3) if len(lat) else None,
    }


def _summarize(
    results: list[tuple[float, float, float, int, str]], t_meas: float
) -> dict[str, Any]:
    """Percentiles (ms) of the requests scheduled after the warm-up; errors; achieved rate."""
    meas = [r for r in results if r[0] >= t_meas]
    ok = [r for r in meas if 200 <= r[3] < 300]
    lat = np.array([(r[2] - r[0]) * 1e3 for r in ok])
    service = np.array([(r[2] - r[1]) * 1e3 for r in ok])
    lag = np.array([(r[1] - r[0]) * 1e3 for r in meas])
    errors: dict[str, int] = {}
    for r in meas:
        if not 200 <= r[3] < 300:
            key = f"HTTP {r[3]}" if r[3] > 0 else r[4] or "error"
            errors[key] = errors.get(key, 0) + 1
    span = max((r[2] for r in ok), default=t_meas) - t_meas
    return {
        "measured": len(meas),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "achieved_rps": round(len(ok) / span, 1) if span > 0 else 0.0,
        "latency_ms": _latency(lat),
        "latencies_ms": np.round(lat, 4).tolist(),  # pooled over passes, then dropped
        # from the moment the client really sent (not the schedule): the server's share
        "service_ms": {"p50": _pct(service, 50), "p99": _pct(service, 99)},
        # how late the client sent: large values mean the client, not the server, fell behind
        "send_lag_ms": {"p50": _pct(lag, 50), "p99": _pct(lag, 99), "max": _pct(lag, 100)},
    }


def client_main(spec_path: str, result_path: str) -> None:
    """Entry of the client process: run the spec, write the summary as JSON."""
    sys.setswitchinterval(0.0005)  # the timer thread gets the GIL back quickly under load
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_drive(spec))
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------- one run, all runs


def measure(
    server: Server,
    requests: list[dict[str, str]],
    rate: float,
    args: argparse.Namespace,
    server_cores: set[int] | None,
    client_cores: set[int] | None,
    tmp: Path,
) -> dict[str, Any]:
    """One (server, rate) run: the client in its own process; the server's RSS and CPU around it."""
    spec = {
        "url": server.url,
        "requests": requests,
        "rate": rate,
        "warmup": args.warmup,
        "duration": args.duration / args.passes,
        "arrivals": args.arrivals,
        "seed": args.seed,
        "pool": args.pool,
        "timeout": args.timeout,
    }
    spec_path, result_path = tmp / "spec.json", tmp / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", __spec__.name, "_client", str(spec_path), str(result_path)]
    metrics0 = scrape(server.url)
    load0, cpu0, busy0, t0 = load_avg(), proc_cpu_s(server.pid), core_busy_s(), time.monotonic()
    peak_kb = proc_status_kb(server.pid, "VmRSS") or 0
    client = subprocess.Popen(cmd, preexec_fn=_pinner(client_cores), start_new_session=True)
    try:
        while client.poll() is None:
            peak_kb = max(peak_kb, proc_status_kb(server.pid, "VmRSS") or 0)
            time.sleep(0.1)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    cpu1, busy1, wall = proc_cpu_s(server.pid), core_busy_s(), time.monotonic() - t0
    metrics1 = scrape(server.url)
    if client.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"load client exited with status {client.returncode}")
    result = json.loads(result_path.read_text())
    sent = result["requests_sent"]
    server_cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    # how busy the server's core was with anything else (other people's jobs): contamination
    others = None
    if server_cores and server_cpu is not None and busy0 and busy1:
        core_busy = sum(busy1[c] - busy0[c] for c in server_cores if c in busy0 and c in busy1)
        others = round(100 * max(core_busy - server_cpu, 0.0) / (wall * len(server_cores)), 1)
    return {
        "server": server.label,
        "rate": rate,
        **result,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "server_cpu_s": round(server_cpu, 2) if server_cpu is not None else None,
        "server_cpu_ms_per_request": round(1e3 * server_cpu / sent, 3)
        if server_cpu is not None and sent
        else None,
        "server_alive": server.proc.poll() is None,
        "server_core_busy_with_others_pct": others,
        "batching": batching(metrics0, metrics1),
        "load_avg_before": load0,
        "load_avg_after": load_avg(),
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the passes of one server at one rate: latency percentiles over every
    measured request of every pass; counts and CPU summed; RSS the peak; the rest averaged."""
    first = runs[0]
    lat = np.concatenate([np.asarray(r["latencies_ms"], dtype=float) for r in runs])
    kinds: dict[str, int] = {}
    for r in runs:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    sent = sum(r["requests_sent"] for r in runs)
    cpu = [r["server_cpu_s"] for r in runs]
    others = [r["server_core_busy_with_others_pct"] for r in runs]
    calls = [r["batching"] for r in runs if r["batching"]]
    n_calls = sum(b["scoring_calls"] for b in calls)

    def per_call(key: str) -> float | None:
        values = [(b[key], b["scoring_calls"]) for b in calls if b[key] is not None]
        if not values or not n_calls:
            return None
        return round(sum(v * c for v, c in values) / sum(c for _, c in values), 3)

    return {
        "server": first["server"],
        "rate": first["rate"],
        "passes": len(runs),
        "measured": sum(r["measured"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "error_kinds": kinds,
        "achieved_rps": round(float(np.mean([r["achieved_rps"] for r in runs])), 1),
        "latency_ms": _latency(lat),
        "service_ms_p50_by_pass": [r["service_ms"]["p50"] for r in runs],
        "client_cpu_s": round(sum(r["client_cpu_s"] for r in runs), 2),
        "requests_sent": sent,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "server_cpu_s": round(sum(cpu), 2) if None not in cpu else None,
        "server_cpu_ms_per_request": round(1e3 * sum(cpu) / sent, 3)
        if None not in cpu and sent
        else None,
        "server_alive": all(r["server_alive"] for r in runs),
        "server_core_busy_with_others_pct": round(float(np.mean(others)), 1)
        if None not in others
        else None,
        "batching": {
            "scoring_calls": n_calls,
            "mean_batch_size": per_call("mean_batch_size"),
            "mean_scoring_call_ms": per_call("mean_scoring_call_ms"),
            "mean_in_server_ms": per_call("mean_in_server_ms"),
        }
        if calls
        else None,
        "load_avg_before": first["load_avg_before"],
        "load_avg_after": runs[-1]["load_avg_after"],
    }


def verdict(row: dict[str, Any], floor: dict[str, Any] | None, target: Target) -> str:
    """The verdict of a recsys row at its target rate: yes, or no with the reasons; else ""."""
    if row["server"] != "recsys" or row["rate"] != target.rate:
        return ""
    p50, p99 = row["latency_ms"]["p50"], row["latency_ms"]["p99"]
    reasons = []
    if row["errors"]:
        reasons.append(f"{row['errors']} errors")
    if p99 is None or p99 > target.p99_ms:
        reasons.append(f"p99 {p99} > {target.p99_ms:g} ms")
    floor_p50 = floor["latency_ms"]["p50"] if floor else None
    if p50 is None or floor_p50 is None:
        reasons.append("no floor p50 to compare")
    elif p50 > target.p50_factor * floor_p50:
        reasons.append(f"p50 {p50 / floor_p50:.1f}x the floor's > {target.p50_factor:g}x")
    return "no: " + "; ".join(reasons) if reasons else "yes"


def _blank(value: Any) -> str:
    return "" if value is None else str(value)


def table(scenarios: list[dict[str, Any]]) -> str:
    """The Markdown table of every run, with the verdicts."""
    head = (
        "| scenario | server | rate (req/s) | achieved (req/s) | p50 ms | p95 ms | p99 ms | errors "
        "| p50 ÷ floor | peak RSS MiB | server CPU ms/req | others on server core % | target met? |"
    )
    lines = [head, "|" + "---|" * 13]
    for sc in scenarios:
        for row in sc.get("rows", []):
            lat = row["latency_ms"]
            ratio = row.get("p50_over_floor")
            lines.append(
                f"| {sc['name']} | {row['server']} | {row['rate']:g} | {row['achieved_rps']:g} "
                f"| {lat['p50']} | {lat['p95']} | {lat['p99']} | {row['errors']} "
                f"| {'' if ratio is None else f'{ratio:.2f}'} | {row['peak_rss_mb']:g} "
                f"| {row['server_cpu_ms_per_request']} "
                f"| {_blank(row['server_core_busy_with_others_pct'])} | {row.get('target_met', '')} |"
            )
    return "\n".join(lines)


def parse_rates(items: list[str], names: list[str]) -> dict[str, list[float]]:
    """``--rates 500`` (every scenario) or ``--rates mf=250,500 sasrec=200``."""
    rates = {n: [SCENARIOS[n].target.rate] for n in names}
    for item in items:
        name, _, values = item.rpartition("=")
        for n in [name] if name else names:
            if n not in rates:
                raise SystemExit(f"--rates: unknown scenario {n!r} (known: {', '.join(names)})")
            rates[n] = [float(v) for v in values.split(",") if v]
    return rates


def _pin_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    cores = sorted(os.sched_getaffinity(0))
    if not pin:
        return None, None, "not pinned (--no-pin)"
    if len(cores) < 2:
        return None, None, f"not pinned: {len(cores)} usable core"
    server, client = {cores[0]}, {cores[1]}
    return (
        server,
        client,
        (
            f"servers on core {cores[0]}, load client and this process on core {cores[1]} "
            "(sched_setaffinity; other processes on the machine are not moved)"
        ),
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Open-loop HTTP load of recsys-serve and of a bare FastAPI floor "
        "(benchmarks/serving.md).",
    )
    p.add_argument("--scenarios", default="mf,sasrec", help="comma-separated (default mf,sasrec)")
    p.add_argument(
        "--rates",
        nargs="*",
        default=[],
        help="500 (every scenario) or mf=250,500 sasrec=200 (default: the target rates)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="measured s per server and rate, split over --passes (default 20)",
    )
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured s before (default 3)")
    p.add_argument(
        "--passes",
        type=int,
        default=1,
        help="split --duration into N runs per server, alternated with the floor's; the table "
        "pools their requests (default 1)",
    )
    p.add_argument(
        "--arrivals", choices=("uniform", "poisson"), default="uniform", help="default uniform"
    )
    p.add_argument("--seed", type=int, default=0, help="requests drawn, Poisson gaps (default 0)")
    p.add_argument("--pool", type=int, default=64, help="client connections, kept (default 64)")
    p.add_argument("--timeout", type=float, default=10.0, help="s per request (default 10)")
    p.add_argument("--mf-artifact", type=Path, help="an MF artifact (default: built)")
    p.add_argument("--sasrec-artifact", type=Path, help="a SASRec artifact (default: built)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("outputs/bench-serve"),
        help="built artifacts and server logs (default outputs/bench-serve)",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the artifacts under --work")
    p.add_argument("--out", type=Path, help="JSON folder (default benchmarks/logs/<date>-serving)")
    p.add_argument("--name", help="JSON file stem (default serving_<time>)")
    p.add_argument(
        "--server-args",
        default="",
        help='extra recsys-serve options, one string: "--ann hnsw" or --server-args=--ann=hnsw',
    )
    p.add_argument("--floor-only", action="store_true", help="measure only the floor")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers and client on separate cores (default on with 2+ cores)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.passes < 1:
        raise SystemExit(f"--passes: must be >= 1, got {args.passes}")
    names = [n for n in args.scenarios.split(",") if n]
    for n in names:
        if n not in SCENARIOS:
            raise SystemExit(f"--scenarios: unknown {n!r} (known: {', '.join(SCENARIOS)})")
    rates = parse_rates(args.rates, names)
    data_root = os.environ.get("RECSYS_DATA_DIR", "data")
    portable = Portable(os.path.abspath(data_root))
    now = dt.datetime.now()
    out_dir = args.out or ROOT / "benchmarks" / "logs" / f"{now:%Y-%m-%d}-serving"
    work = args.work.resolve()
    server_cores, client_cores, pin_note = _pin_plan(args.pin)
    machine = machine_facts()  # before this process is pinned: cores_usable is the machine's
    if client_cores:
        os.sched_setaffinity(0, client_cores)
    # SIGTERM (make interrupted, a timeout) unwinds like Ctrl-C: the finally below stops servers
    signal.signal(signal.SIGTERM, _interrupt)

    record: dict[str, Any] = {
        "benchmark": "serving",
        "command": _command_line([sys.executable, "-m", __spec__.name, *(argv or sys.argv[1:])]),
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "passes": args.passes,
            "warmup_s": args.warmup,
            "arrivals": args.arrivals,
            "seed": args.seed,
            "pool": args.pool,
            "timeout_s": args.timeout,
            "k": K,
            "pinning": pin_note,
            "server_args": args.server_args,
            "data_root_set": "RECSYS_DATA_DIR" in os.environ,
        },
        "scenarios": [],
    }
    print(f"machine: {record['machine']['cpu']}, {record['machine']['cores']} cores; {pin_note}")
    servers: list[Server] = []
    logs = work / "logs" / f"{now:%Y-%m-%d_%H-%M-%S}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
            tmp = Path(tmp_name)
            port = free_port()
            floor_cmd = [sys.executable, str(FLOOR_APP), "--host", "127.0.0.1", "--port", str(port)]
            floor_cmd += ["--log-level", "warning"]
            floor = Server("floor", floor_cmd, port, logs / "floor.log", server_cores)
            servers.append(floor)
            floor.wait_ready()
            record["floor"] = {"command": _command_line(floor_cmd), "ready_s": floor.ready_s}
            for name in names:
                out = {"name": name}  # filled as the runs go: an interrupted run keeps its rows
                record["scenarios"].append(out)
                try:
                    run_scenario(
                        SCENARIOS[name],
                        rates[name],
                        args,
                        data_root,
                        work,
                        logs,
                        tmp,
                        floor,
                        servers,
                        server_cores,
                        client_cores,
                        out,
                    )
                except RuntimeError as e:  # a server that does not start, a failed build
                    print(f"{name}: failed: {e}", file=sys.stderr, flush=True)
                    out["failed"] = str(e)
            record["floor"]["rss_hwm_mb"] = round(
                (proc_status_kb(floor.pid, "VmHWM") or 0) / 1024, 1
            )
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        record["interrupted"] = True
    finally:
        for s in reversed(servers):
            s.stop()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    print()
    print(table(record["scenarios"]))
    for sc in record["scenarios"]:
        for key in ("skipped", "failed"):
            if key in sc:
                print(f"{sc['name']}: {key}: {sc[key].splitlines()[0]}")
    stem = args.name or f"serving_{now:%H-%M-%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(portable(record), indent=1) + "\n")
    print(f"\nwritten: {portable(str(path))}  (server logs: {portable(str(logs))})")
    return 130 if record.get("interrupted") else 0


def run_scenario(
    sc: Scenario,
    rates: list[float],
    args: argparse.Namespace,
    data_root: str,
    work: Path,
    logs: Path,
    tmp: Path,
    floor: Server,
    servers: list[Server],
    server_cores: set[int] | None,
    client_cores: set[int] | None,
    out: dict[str, Any],
) -> None:
    """All rates of one scenario, into ``out``: recsys-serve and the floor in turn at each rate."""
    out["target"] = vars(sc.target) | {"rates": rates}
    given = getattr(args, f"{sc.name}_artifact")
    if given is not None:
        built = {"path": str(given.resolve()), "built": False, "commands": []}
    else:
        built = build_artifact(sc, work, data_root, args.rebuild)
        if "skip" in built:
            print(f"{sc.name}: skipped: {built['skip']}", flush=True)
            out["skipped"] = built["skip"]
            return
    artifact = Path(built["path"])
    out["artifact"] = artifact_facts(artifact) | {
        "built_here": built["built"],
        "build_commands": built["commands"],
    }
    requests = make_requests(sc, artifact, n=4096, seed=args.seed)
    out["requests"] = {"distinct": len(requests), "example": requests[0]}

    recsys: Server | None = None
    if not args.floor_only:
        serve = _bin("recsys-serve")
        if serve is None:
            print(f"{sc.name}: recsys-serve not installed: the floor alone", flush=True)
            out["recsys_missing"] = "recsys-serve not found (pip install -e '.[serve]')"
        else:
            port = free_port()
            cmd = [serve, str(artifact), "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--workers", "1", "--threads", "1", "--log-level", "warning"]
            cmd += shlex.split(args.server_args)
            recsys = Server("recsys", cmd, port, logs / f"recsys-{sc.name}.log", server_cores)
            servers.append(recsys)
            recsys.wait_ready()
            out["recsys"] = {
                "command": _command_line(cmd),
                "ready_s": recsys.ready_s,
                "serving_line": recsys.serving_line(),
                "health": recsys.health,
                "idle_rss_mb": round((proc_status_kb(recsys.pid, "VmRSS") or 0) / 1024, 1),
            }
    out["preflight"] = {
        s.label: preflight(s.url, requests[0]) for s in (recsys, floor) if s is not None
    }
    for label, check in out["preflight"].items():
        if not check["ok"]:
            print(f"{sc.name}: {label}: the first request failed its check: {check}", flush=True)

    rows: list[dict[str, Any]] = []
    out["rows"] = rows
    if args.passes > 1:
        out["passes"] = []
    for rate in rates:
        runs: dict[str, list[dict[str, Any]]] = {}
        for n in range(args.passes):
            # passes alternate the order (recsys, floor, floor, recsys, ...): drift in the
            # machine's load falls on both servers alike
            order = (recsys, floor) if n % 2 == 0 else (floor, recsys)
            for server in order:
                if server is None:
                    continue
                what = f" (pass {n + 1}/{args.passes})" if args.passes > 1 else ""
                print(f"{sc.name}: {server.label} at {rate:g} req/s{what} ...", end=" ", flush=True)
                row = measure(server, requests, rate, args, server_cores, client_cores, tmp)
                lat = row["latency_ms"]
                print(f"p50 {lat['p50']} p99 {lat['p99']} ms, {row['errors']} errors", flush=True)
                runs.setdefault(server.label, []).append(row)
                time.sleep(1.0)
        for label in ("recsys", "floor"):
            if label not in runs:
                continue
            if args.passes > 1:
                rows.append(pooled(runs[label]))
                for n, row in enumerate(runs[label]):
                    row.pop("latencies_ms")
                    out["passes"].append({"pass": n + 1, **row})
            else:
                runs[label][0].pop("latencies_ms")
                rows.append(runs[label][0])
    for row in rows:
        floor_row = next(
            (r for r in rows if r["server"] == "floor" and r["rate"] == row["rate"]), None
        )
        if row["server"] == "recsys" and floor_row and floor_row["latency_ms"]["p50"]:
            if row["latency_ms"]["p50"] is not None:
                row["p50_over_floor"] = round(
                    row["latency_ms"]["p50"] / floor_row["latency_ms"]["p50"], 2
                )
        row["target_met"] = verdict(row, floor_row, sc.target)
    if recsys is not None:
        out["recsys"]["rss_hwm_mb"] = round((proc_status_kb(recsys.pid, "VmHWM") or 0) / 1024, 1)
        out["recsys"]["exit_status"] = recsys.stop()
        # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean stop too
        if out["recsys"]["exit_status"] not in (0, -signal.SIGTERM, None):
            out["recsys"]["log_tail"] = recsys.log_tail()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_client":
        client_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
