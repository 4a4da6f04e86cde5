"""Downloads for real, from an HTTP server on 127.0.0.1: verified, unpacked and installed
atomically; a checksum mismatch, a truncated transfer or no server leave no file behind."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recsys.data import sources
from recsys.data.download import fetch_dataset
from recsys.errors import DataError

U_DATA = b"1\t10\t5\t300\n2\t10\t3\t100\n1\t20\t4\t200\n"


def make_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-100k/u.data", U_DATA)
        z.writestr("ml-100k/README", b"test archive\n")
    return buf.getvalue()


ARCHIVE = make_zip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path == "/ml-100k.zip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(ARCHIVE)))
            self.end_headers()
            self.wfile.write(ARCHIVE)
        elif self.path == "/truncated.zip":  # announces the full size, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(ARCHIVE)))
            self.end_headers()
            self.wfile.write(ARCHIVE[: len(ARCHIVE) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/Beauty.txt":
            body = b"1 5 6\n2 6 5 7\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def cfg_for(root, url: str, **remote) -> dict:
    return {
        "name": "ml-100k",
        "root": str(root),
        "folder": "ml-100k",
        "files": ["u.data"],
        "download": True,
        "remote": {"url": url, "archive_dir": "ml-100k", **remote},
    }


def leftovers(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_download_verifies_unpacks_and_installs(server, tmp_path):
    cfg = cfg_for(
        tmp_path,
        f"{server}/ml-100k.zip",
        sha256=sha(ARCHIVE),
        md5=hashlib.md5(ARCHIVE).hexdigest(),
        files_sha256={"u.data": sha(U_DATA)},
    )
    df = sources.load_ml100k(cfg)
    assert df["item"].tolist() == [10, 10, 20]
    assert (tmp_path / "ml-100k" / "u.data").read_bytes() == U_DATA
    assert leftovers(tmp_path) == ["ml-100k", "ml-100k/README", "ml-100k/u.data"]  # no temp files


def test_plain_file_download(server, tmp_path):
    remote = {"url": f"{server}/Beauty.txt", "sha256": sha(b"1 5 6\n2 6 5 7\n")}
    cfg = {
        "name": "amazon-beauty",
        "root": str(tmp_path),
        "folder": "beauty",
        "files": ["Beauty.txt"],
        "remote": remote,
    }
    df = sources.load_user_sequences(cfg)
    assert df["item"].tolist() == [5, 6, 6, 5, 7]


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    cfg = cfg_for(tmp_path, f"{server}/ml-100k.zip", sha256="0" * 64)
    with pytest.raises(DataError) as e:
        sources.load_ml100k(cfg)
    msg = str(e.value)
    assert "checksum mismatch" in msg and "0" * 64 in msg and "deleted" in msg
    assert f"{server}/ml-100k.zip" in msg and str(tmp_path / "ml-100k") in msg
    assert leftovers(tmp_path) == []


def test_unpacked_file_checksum_mismatch_installs_nothing(server, tmp_path):
    cfg = cfg_for(tmp_path, f"{server}/ml-100k.zip", files_sha256={"u.data": "f" * 64})
    with pytest.raises(
        DataError, match="u.data has SHA-256 .* expected f{64}; nothing was installed"
    ):
        sources.load_ml100k(cfg)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_leaves_no_partial_file(server, tmp_path):
    cfg = cfg_for(tmp_path, f"{server}/truncated.zip")
    with pytest.raises(DataError, match="truncated transfer .*the partial file was deleted"):
        sources.load_ml100k(cfg)
    assert leftovers(tmp_path) == []


def test_offline_error_names_url_files_and_directory(tmp_path):
    # nothing listens on port 9 of 127.0.0.1: the connection is refused, as offline
    url = "http://127.0.0.1:9/ml-100k.zip"
    with pytest.raises(DataError) as e:
        sources.load_ml100k(cfg_for(tmp_path, url))
    msg = str(e.value)
    assert msg.startswith(f"cannot download {url}")
    assert f"download {url} and put u.data in {tmp_path / 'ml-100k'}/" in msg
    assert leftovers(tmp_path) == []


def test_http_404_and_missing_member(server, tmp_path):
    with pytest.raises(DataError, match="cannot download .*/nope.zip"):
        sources.load_ml100k(cfg_for(tmp_path, f"{server}/nope.zip"))
    cfg = cfg_for(tmp_path, f"{server}/ml-100k.zip")
    cfg["remote"]["archive_dir"] = "elsewhere"
    with pytest.raises(DataError, match="the archive has no u.data under elsewhere"):
        sources.load_ml100k(cfg)
    assert leftovers(tmp_path) == []


def test_download_disabled_and_read_only_root(server, tmp_path):
    cfg = cfg_for(tmp_path, f"{server}/ml-100k.zip")
    cfg["download"] = False
    with pytest.raises(DataError, match=r"missing u.data .*\(data.download=false\); download http"):
        sources.load_ml100k(cfg)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match="cannot download into .*ro"):
            fetch_dataset({"url": f"{server}/ml-100k.zip"}, ro / "ml-100k", ["u.data"])
    finally:
        ro.chmod(0o755)
    assert leftovers(ro) == []
