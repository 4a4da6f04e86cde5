"""``recsys-serve``: the real server on a free loopback port, real HTTP requests.

Every answer is compared with ``recsys.load(...)``'s for the same users, histories and items (the
independent reference: the Python API the service wraps); every error case with its status and
JSON body; a reload under concurrent load with zero failed requests, and a corrupt artifact
refused while the old one keeps serving; 401 without the bearer token; an opted-out user is never
served and never named in the log; a pseudonymised artifact answers pseudonyms. The load test
itself lives in ``make bench-serve`` (a benchmark, not a timed test).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from recsys.serving.artifact import load, pseudonym  # noqa: E402
from recsys.serving.export import export_model  # noqa: E402
from tests.conftest import feature_model  # noqa: E402
from tests.integration.test_export_features import SASREC  # noqa: E402

PSEUDONYM_KEY = "serve test pseudonym key"


def _csv_log(root: Path) -> dict[str, Path]:
    """Customers cust-000.. and products sku-00.. with customer and product attributes."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,time"]
    for u in range(40):
        for t, i in enumerate(rng.choice(30, size=8, replace=False)):
            rows.append(f"cust-{u:03d},sku-{i:02d},{u * 100 + t}")
    (root / "log.csv").write_text("\n".join(rows) + "\n")
    users = ["user_id,occupation"] + [
        f"cust-{u:03d},{('clerk', 'nurse', 'chef')[u % 3]}" for u in range(40)
    ]
    (root / "users.csv").write_text("\n".join(users) + "\n")
    items = ["item_id,category"] + [f"sku-{i:02d},c{i % 4}" for i in range(30)]
    (root / "items.csv").write_text("\n".join(items) + "\n")
    return {"log": root / "log.csv", "users": root / "users.csv", "items": root / "items.csv"}


def _export(overrides: list[str], root: Path, out: Path, seed: int = 0, **kw) -> Path:
    config, dm, _, model = feature_model(overrides, root, seed)
    model.eval()
    return export_model(
        model, config, dm.data, dm.fingerprint, out, torchscript=False, onnx=False, **kw
    )


@pytest.fixture(scope="module")
def arts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    files = _csv_log(root)
    csv = [
        "data=csv",
        f"data.path={files['log']}",
        "data.columns.time=time",
        "data.split=leave_one_out",
        "data.cache=false",
        f"++data.user_features={files['users']}",
        "++data.user_feature_columns={id: user_id, categorical: [occupation]}",
        f"++data.item_features={files['items']}",
        "++data.item_feature_columns={id: item_id, categorical: [category]}",
        "model=mf",
        "model.features={user: all, item: all}",
    ]
    sasrec = [
        "data.n_users=80",
        "data.n_items=100",
        "data.mean_length=10",
        "data.n_groups=3",
        "data.cache=false",
        "++data.item_features=auto",
        *SASREC,  # a tiny SASRec with item attributes, as the export tests build it
    ]
    out = {
        "mf": _export(csv, root, root / "mf"),
        "mf2": _export(csv, root, root / "mf2", seed=1),
        "sasrec": _export(sasrec, root, root / "sasrec"),
        "pop": _export([*csv[:5], "model=pop"], root, root / "pop"),  # no user or item vectors
    }
    os.environ["RECSYS_PSEUDONYM_KEY"] = PSEUDONYM_KEY
    try:
        out["pseudo"] = _export(csv, root, root / "pseudo", pseudonymize_users=True)
    finally:
        del os.environ["RECSYS_PSEUDONYM_KEY"]
    return out


# -- a real server, a real client -----------------------------------------------------------
class Server:
    def __init__(self, proc: subprocess.Popen, port: int, lines: list[str]):
        self.proc, self.port, self.lines = proc, port, lines

    def request(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        ctype = r.getheader("content-type", "")
        return r.status, (json.loads(payload) if "json" in ctype else payload.decode())

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def log(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def serve(artifact: Path, *flags: str, env: dict[str, str] | None = None):
    cmd = [sys.executable, "-m", "recsys.cli.serve", str(artifact), "--port", "0", *flags]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    lines: list[str] = []
    port = None
    try:
        deadline = time.time() + 120
        while port is None:
            line = proc.stderr.readline()
            if not line:
                raise AssertionError(f"recsys-serve exited {proc.wait()}: {''.join(lines)}")
            lines.append(line)
            m = re.search(r"^serving .* on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
            assert time.time() < deadline, "".join(lines)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        server = Server(proc, port, lines)
        while True:  # the port listens before uvicorn answers: wait for /health
            try:
                if server.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def same(http_row: dict, py_row: dict) -> None:
    """An HTTP answer equals the Python API's: the same items, the same scores (JSON floats)."""
    assert http_row["items"] == py_row["items"]
    np.testing.assert_allclose(http_row["scores"], py_row["scores"], rtol=1e-5, atol=1e-6)
    assert http_row.get("fallback") == py_row.get("fallback")


# -- the MF artifact: answers, errors, opt-out, metrics ---------------------------------------
@pytest.fixture(scope="module")
def mf(arts, tmp_path_factory):
    optout = tmp_path_factory.mktemp("optout") / "optout.txt"
    optout.write_text("# opted out\ncust-007\n")
    with serve(arts["mf"], "--opt-out", str(optout), "--max-body-bytes", "4096") as s:
        yield s


def test_recommend_equals_the_python_api(arts, mf):
    rec = load(arts["mf"])
    users = [u for u in rec.user_ids.tolist() if u != "cust-007"][:12]
    for k, exclude in ((10, True), (3, False)):
        want = rec.recommend(users, k=k, exclude_seen=exclude)
        flag = "true" if exclude else "false"
        for u, row in zip(users, want, strict=True):
            status, got = mf.get(f"/v1/recommend?user={u}&k={k}&exclude_seen={flag}")
            assert status == 200, got
            assert got["user"] == u
            same(got, row)
        status, got = mf.post("/v1/recommend", {"users": users, "k": k, "exclude_seen": exclude})
        assert status == 200, got
        assert [r["user"] for r in got["results"]] == users
        for g, w in zip(got["results"], want, strict=True):
            same(g, w)


def test_new_customer_and_new_items_equal_the_python_api(arts, mf):
    rec = load(arts["mf"])
    body = {
        "items": ["sku-01", "sku-02"],
        "attributes": {"occupation": "nurse"},
        "new_items": {"sku-new": {"category": "c1"}},
        "k": 8,
    }
    status, got = mf.post("/v1/recommend/history", body)
    assert status == 200, got
    want = rec.recommend(
        history=body["items"], attributes=body["attributes"], new_items=body["new_items"], k=8
    )[0]
    assert got["user"] is None
    same(got, want)
    assert not {"sku-01", "sku-02"} & set(got["items"])
    status, got = mf.post("/v1/similar", {"attributes": {"category": "c2"}, "k": 5})
    assert status == 200, got
    same(got, rec.similar({"category": "c2"}, k=5))


def test_similar_items_equal_the_python_api(arts, mf):
    rec = load(arts["mf"])
    for item in ("sku-00", "sku-13"):
        status, got = mf.get(f"/v1/similar?item={item}&k=5")
        assert status == 200, got
        want = rec.similar_items([item], k=5)[0]
        assert got["item"] == item and got["method"] == want["method"]
        same(got, want)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "pattern", "field"),
    [
        ("GET", "/v1/recommend?user=nobody", None, 404, r"unknown user id\(s\): nobody", None),
        ("GET", "/v1/recommend?user=cust-007", None, 404, r"unknown user", None),  # opted out
        ("GET", "/v1/recommend?user=cust-001&k=0", None, 422, r"k must be between 1 and", "k"),
        ("GET", "/v1/recommend?user=cust-001&k=5000", None, 422, r"k must be between", "k"),
        ("GET", "/v1/recommend?user=cust-001&k=ten", None, 422, r"^k: .*integer", "k"),
        ("GET", "/v1/recommend?k=3", None, 422, r"^user: Field required", "user"),
        ("GET", "/v1/recommend?user=cust-001&exclude_seen=maybe", None, 422, r"exclude_seen", "exclude_seen"),
        ("POST", "/v1/recommend", {"users": []}, 422, r"^users: ", "users"),
        ("POST", "/v1/recommend", {"users": ["cust-001"], "kk": 3}, 422, r"^kk: Extra inputs", "kk"),
        ("POST", "/v1/recommend", {"users": ["cust-001", "x9"]}, 404, r"unknown user id\(s\): x9", None),
        ("POST", "/v1/recommend", b"{not json", 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend", b"x" * 5000, 413, r"body over 4096 bytes", "body"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01", "nope"]}, 404, r"unknown item id\(s\): nope", None),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"]}, 422, r"scores known users only", None),
        ("POST", "/v1/recommend/history", {"items": [], "k": 2}, 422, r"history is empty", None),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "attributes": {"planet": "x"}}, 422, r"planet", None),
        ("GET", "/v1/similar?item=nope", None, 404, r"unknown item id\(s\): nope", None),
        ("GET", "/v1/similar?item=sku-01&method=magic", None, 422, r"method must be", "method"),
        ("GET", "/v2/nothing", None, 404, r"Not Found", None),
        ("DELETE", "/v1/recommend", None, 405, r"Method Not Allowed", None),
        # the lean path's own parsing (recsys/serving/service.py, _Gate): every bad body a 4xx
        # naming the field, as FastAPI's validation named it
        ("POST", "/v1/recommend/history", b'{"items": [', 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend/history", b"", 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend/history", b"[" * 3000, 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend/history", b'{"items": ["\xff"]}', 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend/history", b'{"items": ["sku-01"]}x', 400, r"^malformed JSON body", "body"),
        ("POST", "/v1/recommend/history", b"[1, 2]", 422, r"^body: Input should be an object", "body"),
        ("POST", "/v1/recommend/history", b"null", 422, r"^body: ", "body"),
        ("POST", "/v1/recommend/history", {"items": "sku-01"}, 422, r"^items: .*array", "items"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01", ["sku-02"]]}, 422, r"^items\.1: .*an id", "items.1"),
        ("POST", "/v1/recommend/history", {"items": [True]}, 422, r"^items\.0: .*an id", "items.0"),
        ("POST", "/v1/recommend/history", {"items": [1.5]}, 422, r"^items\.0: .*an id", "items.0"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "k": "ten"}, 422, r"^k: .*integer", "k"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "k": True}, 422, r"^k: .*integer", "k"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "k": 2.5}, 422, r"^k: .*integer", "k"),
        ("POST", "/v1/recommend/history", b'{"items": ["sku-01"], "k": 1e400}', 422, r"^k: ", "k"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "k": 0}, 422, r"k must be between 1 and", "k"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "k": 1001}, 422, r"k must be between 1 and 1000", "k"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "exclude_seen": "maybe"}, 422, r"^exclude_seen: .*boolean", "exclude_seen"),
        ("POST", "/v1/recommend/history", {"items": ["sku-01"], "colour": "red"}, 422, r"^colour: Extra inputs", "colour"),
        ("POST", "/v1/recommend/history", {"attributes": ["nurse"]}, 422, r"^attributes: ", "attributes"),
        ("POST", "/v1/recommend/history", {"new_items": {"sku-new": 3}}, 422, r"^new_items\.sku-new: ", "new_items.sku-new"),
        ("POST", "/v1/recommend/history", b"x" * 4097, 413, r"body over 4096 bytes", "body"),
        ("POST", "/v1/recommend", {}, 422, r"^users: Field required", "users"),
        ("POST", "/v1/recommend", {"users": "cust-001"}, 422, r"^users: ", "users"),
        ("POST", "/v1/recommend", {"users": ["cust-001"], "k": -1}, 422, r"k must be between", "k"),
        ("POST", "/v1/recommend", {"users": ["cust-001"], "exclude_seen": []}, 422, r"^exclude_seen: ", "exclude_seen"),
        ("POST", "/v1/similar", {}, 422, r"^attributes: Field required", "attributes"),
        ("POST", "/v1/similar", {"attributes": [1]}, 422, r"^attributes: ", "attributes"),
        ("POST", "/v1/similar", {"attributes": {"category": "c1"}, "k": 0}, 422, r"k must be between", "k"),
        ("POST", "/v1/similar", b"{", 400, r"^malformed JSON body", "body"),
        ("GET", "/v1/recommend?user=cust-001&k=", None, 422, r"^k: .*integer", "k"),
        ("GET", "/v1/recommend?user=cust-001&k=1.5", None, 422, r"^k: .*integer", "k"),
        ("GET", "/v1/similar?k=3", None, 422, r"^item: Field required", "item"),
        ("GET", "/v1/similar?item=sku-01&k=x", None, 422, r"^k: .*integer", "k"),
        ("GET", "/v1/similar?item=sku-01&k=0", None, 422, r"k must be between", "k"),
    ],
)  # fmt: skip
def test_errors_are_json_with_the_right_status(mf, method, path, body, status, pattern, field):
    raw = body if isinstance(body, bytes) else None
    got_status, got = mf.request(method, path, None if raw else body, raw=raw)
    assert got_status == status, got
    assert isinstance(got, dict) and set(got) <= {"error", "field"}, got
    assert re.search(pattern, got["error"]), got
    assert got.get("field") == field
    assert "Traceback" not in got["error"]


def test_an_oversize_body_without_content_length_is_refused_while_read(mf):
    """A chunked body (no Content-Length) is counted as it arrives: 413 once past the limit."""
    conn = http.client.HTTPConnection("127.0.0.1", mf.port, timeout=30)
    chunks = iter([b'{"items": ["' + b"x" * 3000, b"x" * 3000 + b'"]}'])
    conn.request("POST", "/v1/recommend/history", body=chunks, encode_chunked=True)
    r = conn.getresponse()
    got = json.loads(r.read())
    conn.close()
    assert r.status == 413 and got == {"error": "body over 4096 bytes", "field": "body"}
    # a chunked body under the limit is answered as usual
    conn = http.client.HTTPConnection("127.0.0.1", mf.port, timeout=30)
    body = json.dumps({"users": ["cust-001", "cust-002"], "k": 3}).encode()
    conn.request("POST", "/v1/recommend", body=iter([body[:10], body[10:]]), encode_chunked=True)
    r = conn.getresponse()
    got = json.loads(r.read())
    conn.close()
    assert r.status == 200 and [row["user"] for row in got["results"]] == ["cust-001", "cust-002"]


def test_the_lean_path_answers_as_fastapis_declared_routes(arts):
    """The hot routes are answered by _Gate without FastAPI's routing; FastAPI's declarations of
    the same routes (what /docs describes) give the same answers and the same errors."""
    from recsys.serving.service import ServeSettings, create_app

    app = create_app(ServeSettings(artifact=str(arts["mf"])))
    requests = [
        ("GET", "/v1/recommend?user=cust-001", b""),
        ("GET", "/v1/recommend?user=cust-003&k=4&exclude_seen=false", b""),
        ("GET", "/v1/recommend?user=cust-003&k=4&exclude_seen=0&k=2", b""),  # the last k
        ("GET", "/v1/recommend?user=nobody", b""),
        ("GET", "/v1/recommend?user=cust-001&k=ten", b""),
        ("GET", "/v1/recommend?user=cust-001&k=0", b""),
        ("GET", "/v1/recommend?k=2", b""),
        ("POST", "/v1/recommend", b'{"users": ["cust-001", "cust-002"], "k": 3}'),
        ("POST", "/v1/recommend", b'{"users": []}'),
        ("POST", "/v1/recommend", b'{"users": ["cust-001"], "k": "3"}'),
        ("POST", "/v1/recommend/history", b'{"items": ["sku-01"], "attributes": {"occupation": "chef"}}'),
        ("POST", "/v1/recommend/history", b'{"items": ["sku-01", 7]}'),
        ("POST", "/v1/recommend/history", b'{"items": [true]}'),
        ("POST", "/v1/recommend/history", b'{"items": ["sku-01"], "extra": 1}'),
        ("POST", "/v1/recommend/history", b"[]"),
        ("GET", "/v1/similar?item=sku-02&k=3", b""),
        ("GET", "/v1/similar?item=sku-02&method=magic", b""),
        ("POST", "/v1/similar", b'{"attributes": {"category": "c3"}, "k": 4}'),
    ]  # fmt: skip

    async def call(asgi, method: str, target: str, body: bytes) -> tuple[int, dict]:
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        out: list[dict] = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            out.append(message)

        await asyncio.wait_for(asgi(scope, receive, send), 30)
        payload = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
        return out[0]["status"], json.loads(payload)

    async def main():
        service = app.state.service
        await service.start()
        try:
            return [(await call(app, *r), await call(app.api, *r), r) for r in requests]
        finally:
            await service.stop()

    answers = asyncio.run(main())
    for (status, lean), (want_status, declared), r in answers:
        assert status == want_status, (r, lean, declared)
        if status == 200:
            assert lean == declared, r
        else:  # the same field; pydantic words some errors differently for JSON input
            assert lean.get("field") == declared.get("field"), (r, lean, declared)
            assert lean["error"].split(":")[0] == declared["error"].split(":")[0], r
    # and the answers are the Python API's
    rec = load(arts["mf"])
    for (status, got), _, r in answers[:3]:
        q = dict(p.split("=") for p in r[1].split("?")[1].split("&"))
        flag = q.get("exclude_seen", "true") in ("true", "1")
        want = rec.recommend([q["user"]], k=int(q.get("k", 10)), exclude_seen=flag)[0]
        assert status == 200 and got["user"] == q["user"]
        same(got, want)


def test_opted_out_user_is_never_served_nor_logged(arts, mf):
    for path, body in (
        ("/v1/recommend?user=cust-007", None),
        ("/v1/recommend", {"users": ["cust-007"]}),
    ):
        status, _ = mf.request("POST" if body else "GET", path, body)
        assert status == 404
    assert mf.get("/v1/recommend?user=cust-008")[0] == 200
    time.sleep(0.3)
    log = mf.log()
    assert "GET /v1/recommend 404" in log and "GET /v1/recommend 200" in log  # the access log
    assert "cust-007" not in log and "cust-008" not in log  # ids are never logged


def test_health_metrics_docs(arts, mf):
    status, h = mf.get("/health")
    rec = load(arts["mf"])
    import hashlib

    assert status == 200 and h["model"] == "MF" and h["items"] == rec.num_items
    assert h["digest"] == hashlib.sha256((arts["mf"] / "artifact.json").read_bytes()).hexdigest()
    assert h["signature"] == rec.signature
    mf.get("/v1/recommend?user=cust-001")
    status, text = mf.get("/metrics")
    assert status == 200
    samples = dict(
        re.match(r"^(\S+) (\S+)$", line).groups()
        for line in text.splitlines()
        if line and not line.startswith("#")
    )
    assert float(samples['recsys_requests_total{endpoint="/v1/recommend",status="200"}']) >= 1
    assert float(samples['recsys_request_duration_seconds_count{endpoint="/v1/recommend"}']) >= 1
    assert float(samples["recsys_model_load_seconds"]) > 0
    assert samples[f'recsys_model_info{{model="MF",digest="{h["digest"]}"}}'] == "1.0"
    assert float(samples["recsys_batch_size_count"]) >= 1
    status, page = mf.get("/docs")
    assert status == 200 and "swagger" in page.lower()
    status, spec = mf.get("/openapi.json")
    assert {"/v1/recommend", "/v1/recommend/history", "/v1/similar", "/health"} <= set(
        spec["paths"]
    )
    # the lean path's routes are described as they are validated
    get = spec["paths"]["/v1/recommend"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    assert set(params) == {"user", "k", "exclude_seen"} and params["user"]["required"]
    assert params["k"]["schema"]["type"] == "integer"
    post = spec["paths"]["/v1/recommend/history"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert {"items", "k", "exclude_seen", "attributes", "new_items"} == set(body["properties"])
    assert body["additionalProperties"] is False and body["properties"]["k"]["type"] == "integer"
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert set(spec["components"]["schemas"][answer.rsplit("/", 1)[-1]]["properties"]) == {
        "user", "items", "scores", "fallback"
    }  # fmt: skip


# -- SASRec: histories, token, fallback -------------------------------------------------------
def test_sasrec_history_token_and_fallback(arts):
    rec = load(arts["sasrec"])
    token = {"Authorization": "Bearer s3cret"}
    with serve(arts["sasrec"], "--fallback", "popular", env={"RECSYS_SERVE_TOKEN": "s3cret"}) as s:
        status, health = s.get("/health")
        assert status == 200  # open: probes carry no token
        # built and checked at load, before requests (one block: recsys.serving.history)
        assert health["history_path"] == "one block, closed form"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, got = s.get("/v1/recommend?user=1", headers=headers)
            assert status == 401 and "bearer token" in got["error"], got
        assert s.get("/metrics", headers={})[0] == 401
        # sessions of known items, as the Python API answers them
        hist = [rec.item_ids[rec.history(u)].tolist() for u in range(6)]
        for h in hist:
            status, got = s.post("/v1/recommend/history", {"items": h, "k": 7}, headers=token)
            assert status == 200, got
            same(got, rec.recommend(history=h, k=7)[0])
        # concurrent sessions are micro-batched into shared calls, answers unchanged
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda h: s.post("/v1/recommend/history", {"items": h, "k": 7}, headers=token),
                    hist * 4,
                )
            )
        for (status, got), h in zip(answers, hist * 4, strict=True):
            assert status == 200
            same(got, rec.recommend(history=h, k=7)[0])
        # new products ranked with the catalogue
        new = {"new-1": {"genre": ["g0"]}}
        body = {"items": hist[0], "k": 5, "new_items": new}
        status, got = s.post("/v1/recommend/history", body, headers=token)
        assert status == 200, got
        same(got, rec.recommend(history=hist[0], k=5, new_items=new)[0])
        # unknown users get the fallback, and the answer says so
        users = [rec.user_ids[0].item(), "stranger"]
        status, got = s.post("/v1/recommend", {"users": users, "k": 4}, headers=token)
        assert status == 200
        for g, w in zip(got["results"], rec.recommend(users, k=4, fallback="popular"), strict=True):
            same(g, w)
        assert got["results"][1] == {"user": "stranger", **rec._popular(None, 4)}
        status, got = s.get("/v1/similar?item=" + str(rec.item_ids[3]) + "&k=4", headers=token)
        assert status == 200
        same(got, rec.similar_items([rec.item_ids[3].item()], k=4)[0])


def test_fast_history_encoder_answers_as_the_eager_model(arts):
    """SASRec's histories are scored by a fast path built at load (recsys.serving.history: the
    closed form, for this one-block model); its answers equal the eager model's (same items;
    scores within 1e-5 relative, 1e-6 absolute), item attributes included, for single
    histories and batches (known users and none)."""
    fast, eager = load(arts["sasrec"]), load(arts["sasrec"], trace=False)
    n = fast.num_users
    hists = [fast.item_ids[fast.history(u)].tolist() for u in range(n)]
    for h in hists[:20]:
        same(fast.recommend(history=h, k=10)[0], eager.recommend(history=h, k=10)[0])
        same(fast.recommend_history(h, k=3), eager.recommend_history(h, k=3))
    assert fast.history_path == "one block, closed form"
    assert eager.history_path == "eager (trace=False)"
    assert fast.score([], []).shape == (0, fast.num_items)
    users = fast.user_ids[: min(n, 40)].tolist()
    for a, b in zip(fast.recommend(users, k=10), eager.recommend(users, k=10), strict=True):
        same(a, b)
    idx = list(range(min(n, 40)))
    np.testing.assert_allclose(
        fast.score([-1] * len(idx), [fast.history(u) for u in idx]),
        eager.score([-1] * len(idx), [eager.history(u) for u in idx]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pseudonymised_artifact_answers_pseudonyms(arts, tmp_path):
    rec = load(arts["pseudo"])
    optout = tmp_path / "optout.txt"
    optout.write_text("cust-009\n")  # a raw id: matched through the key in the environment
    env = {"RECSYS_PSEUDONYM_KEY": PSEUDONYM_KEY}
    with serve(arts["pseudo"], "--opt-out", str(optout), env=env) as s:
        p = pseudonym("cust-003", PSEUDONYM_KEY)
        status, got = s.get(f"/v1/recommend?user={p}&k=5")
        assert status == 200 and got["user"] == p
        same(got, rec.recommend([p], k=5)[0])
        assert s.get("/v1/recommend?user=cust-003")[0] == 404  # the raw id is not known
        assert s.get(f"/v1/recommend?user={pseudonym('cust-009', PSEUDONYM_KEY)}")[0] == 404
        time.sleep(0.3)
        assert p not in s.log() and "cust-00" not in s.log()


# -- hot reload -------------------------------------------------------------------------------
def _digest(art: Path) -> str:
    import hashlib

    return hashlib.sha256((art / "artifact.json").read_bytes()).hexdigest()


def test_reload_under_load_swaps_atomically_and_refuses_a_corrupt_artifact(arts, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(arts["mf"])
    bad = tmp_path / "corrupt"
    shutil.copytree(arts["mf2"], bad)
    weights = bad / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated: the checksum fails
    optout = tmp_path / "optout.txt"
    optout.write_text("")
    rec1, rec2 = load(arts["mf"]), load(arts["mf2"])
    users = rec1.user_ids[:10].tolist()
    want = {id(r): {u: r.recommend([u], k=5)[0]["items"] for u in users} for r in (rec1, rec2)}
    with serve(link, "--opt-out", str(optout)) as s:
        assert s.get("/health")[1]["digest"] == _digest(arts["mf"])
        stop, results = threading.Event(), []

        def hammer(n: int) -> None:
            while not stop.is_set():
                u = users[n % len(users)]
                status, got = s.get(f"/v1/recommend?user={u}&k=5")
                results.append((status, u, got.get("items") if status == 200 else got))
                n += 1

        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(hammer, n)
            time.sleep(0.5)
            link.unlink()
            link.symlink_to(arts["mf2"])  # deploy: repoint the link, then reload
            status, got = s.post("/admin/reload")
            assert status == 200 and got["digest"] == _digest(arts["mf2"]), got
            assert got["previous_digest"] == _digest(arts["mf"])
            time.sleep(0.5)
            link.unlink()
            link.symlink_to(bad)
            status, got = s.post("/admin/reload")
            assert status == 409 and "still serving" in got["error"], got
            assert "weights.pt" in got["error"]
            assert s.get("/health")[1]["digest"] == _digest(arts["mf2"])
            link.unlink()
            link.symlink_to(arts["mf"])
            optout.write_text("cust-002\n")
            s.proc.send_signal(signal.SIGHUP)  # the same reload, by signal
            deadline = time.time() + 30
            while s.get("/health")[1]["digest"] != _digest(arts["mf"]):
                assert time.time() < deadline
                time.sleep(0.1)
            time.sleep(0.5)
            stop.set()
        statuses = [r[0] for r in results]
        ok = [r for r in results if r[0] == 200]
        assert len(results) > 50
        # zero failed requests: every one answered 200 by one model or the other, except the
        # opted-out user after the last reload
        assert all(st == 200 or (st == 404 and u == "cust-002") for st, u, _ in results), set(
            statuses
        )
        for _, u, items in ok:
            assert items in (want[id(rec1)][u], want[id(rec2)][u])
        assert s.get("/v1/recommend?user=cust-002")[0] == 404  # the opt-out list was re-read
        _, text = s.get("/metrics")
        assert 'recsys_reloads_total{result="loaded"} 2.0' in text
        assert 'recsys_reloads_total{result="refused"} 1.0' in text


# -- the command line ----------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli.serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_artifact_or_flag_is_one_line_and_exit_2(arts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(arts["mf"], bad)
    (bad / "artifact.json").write_text("{ not json")
    for args, pattern in (
        ((str(tmp_path / "missing"),), r"no such artifact directory"),
        ((str(bad),), r"artifact.sig: manifest_sha256 does not match artifact.json"),
        ((str(arts["mf"]), "--max-batch", "0"), r"--max-batch must be an integer >= 1"),
        ((str(arts["mf"]), "--opt-out", str(tmp_path / "none.txt")), r"--opt-out: no such file"),
        ((str(arts["mf"]), "--ann", "kd"), r"invalid choice"),
        ((str(arts["pop"]), "--ann", "hnsw"), r"--ann hnsw: Popularity does not score by a dot"),
    ):
        r = _cli(*args, "--port", "0")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert re.search(pattern, lines[0]), lines[0]


def test_ann_index_serves_approximately_exact_answers(arts):
    pytest.importorskip("faiss")
    rec = load(arts["sasrec"])
    users = rec.user_ids[:20].tolist()
    with serve(arts["sasrec"], "--ann", "hnsw", "--ann-ef", "512") as s:
        assert s.get("/health")[1]["ann"] == {"kind": "hnsw", "ef_search": 512}
        for u, want in zip(users, rec.recommend(users, k=10), strict=True):
            status, got = s.get(f"/v1/recommend?user={u}&k=10")
            assert status == 200
            same(got, want)  # ef_search above the catalogue size: the exact answer


def test_a_large_catalogue_is_ranked_through_the_exact_screen(tmp_path, monkeypatch):
    """Above ``SCREEN_MIN_ELEMENTS`` item numbers, single users and histories are ranked
    through the int8 screen (recsys.serving.screen), from Python and over HTTP; the reference is
    the same artifact ranked by the whole float32 product (``screen=False``)."""
    pytest.importorskip("numba")
    from recsys.serving.screen import SCREEN_MIN_ELEMENTS

    data = ["data.n_users=300", "data.n_items=2400", "data.mean_length=30", "data.cache=false"]
    mf = _export([*data, "model=mf", "model.embedding_size=1280"], tmp_path, tmp_path / "mf")
    whole = load(mf, screen=False)
    assert whole.num_items * 1280 >= SCREEN_MIN_ELEMENTS
    screened = load(mf)
    users = whole.user_ids[:30].tolist()
    for u in users:
        for k, exclude in ((10, True), (25, False)):
            same(screened.recommend([u], k, exclude)[0], whole.recommend([u], k, exclude)[0])
    assert screened.scan_path == "int8 screen, exact"
    assert whole.scan_path == "float32 product (screen=False)"
    from recsys.serving import screen as screens

    with monkeypatch.context() as m:  # no compiled loops (numba absent): the product, named
        m.setattr(screens, "_kernels", False)
        m.setattr(screens, "unavailable", "numba is not installed")
        plain = load(mf)
        same(plain.recommend(users[:1], 10)[0], whole.recommend(users[:1], 10)[0])
        assert plain.scan_path == "float32 product (numba is not installed)"
    with serve(mf) as s:
        assert s.get("/health")[1]["scan_path"] == "int8 screen, exact"
        assert "ranking: int8 screen, exact" in s.log()
        for u, want in zip(users, whole.recommend(users, k=10), strict=True):
            status, got = s.get(f"/v1/recommend?user={u}&k=10")
            assert status == 200, got
            same(got, want)
    sasrec = [*data, *SASREC[:1], "model.max_len=20", "model.hidden_size=1280", "model.n_layers=1"]
    art = _export(sasrec, tmp_path, tmp_path / "sasrec")
    whole, screened = load(art, screen=False), load(art)
    for u in range(20):
        h = whole.item_ids[whole.history(u)].tolist()
        same(screened.recommend(history=h, k=10)[0], whole.recommend(history=h, k=10)[0])
    assert screened.scan_path == "int8 screen, exact"


@pytest.mark.slow
def test_workers_reload_together_and_keep_serving_a_refused_artifact(arts, tmp_path):
    """--workers 2: a reload checks the new artifact, then uvicorn's parent replaces each worker
    (the new one in service before the old one retires); a corrupt one never replaces a worker."""
    link = tmp_path / "current"
    link.symlink_to(arts["mf"])
    new, old = _digest(arts["mf2"]), _digest(arts["mf"])
    with serve(link, "--workers", "2") as s:
        link.unlink()
        link.symlink_to(arts["mf2"])
        status, got = s.post("/admin/reload")
        assert status == 200 and got == {"reloaded": "restarting workers"}
        deadline, renewed = time.time() + 180, set()
        while len(renewed) < 2:  # two new worker processes answer with the new artifact
            status, h = s.get("/health")
            assert status == 200 and h["digest"] in (old, new)
            if h["digest"] == new:
                renewed.add(h["pid"])
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(1.0)  # the last old worker finishes its requests and exits
        bad = tmp_path / "bad"
        shutil.copytree(arts["mf"], bad)
        (bad / "weights.pt").write_bytes(b"not weights")
        link.unlink()
        link.symlink_to(bad)
        status, got = s.post("/admin/reload")
        assert status == 409 and "weights.pt" in got["error"]
        assert all(s.get("/health")[1]["digest"] == new for _ in range(6))
