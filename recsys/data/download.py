"""Download a dataset's official archive into the data root: progress bar, checksum, unpack, atomic.

A catalog config names its archive under ``data.remote``::

    remote:
      url: https://files.grouplens.org/datasets/movielens/ml-100k.zip
      md5: 0e33842e24a9c977be4e0107933c0723    # of the archive, as published (or sha256:)
      archive_dir: ml-100k                       # folder inside the archive holding the files
      files_sha256: {u.data: 06416e59...}        # known SHA-256 of the unpacked files

Everything is written inside a temporary directory next to the dataset folder; files are moved
into ``<root>/<folder>/`` (one ``os.replace`` each, the expected files last) only once every
checksum matches, so an interrupted or corrupt transfer never leaves a file the loaders would
take for the dataset. Any failure is a :class:`~recsys.errors.DataError` naming the URL, the
expected files and the directory to put them in by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys.errors import DataError

CHUNK = 1 << 20


def _manual(url: str, folder: Path, files: list[str]) -> str:
    return f"download {url} and put {', '.join(files)} in {folder}/"


def fetch_dataset(
    remote: Mapping[str, Any], folder: Path, files: list[str], timeout: float = 60.0
) -> None:
    """Download ``remote['url']``, verify it, unpack it and install ``files`` into ``folder``."""
    url = str(remote["url"])
    kind = str(remote.get("kind") or _kind(url))
    from recsys.data.cache import writable

    try:
        if not writable(folder.parent):
            raise PermissionError(13, "read-only directory")
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.download-", dir=folder.parent))
    except OSError as e:
        raise DataError(
            f"cannot download into {folder.parent} ({e.strerror or e}); {_manual(url, folder, files)}"
        ) from None
    try:
        archive = tmp / (url.rstrip("/").rpartition("/")[2] or "download")
        download(
            url,
            archive,
            sha256=remote.get("sha256"),
            md5=remote.get("md5"),
            timeout=timeout,
            hint=_manual(url, folder, files),
        )
        unpacked = tmp / "unpacked"
        unpacked.mkdir()
        if kind == "zip":
            _unzip(archive, unpacked, url)
        elif kind == "tar":
            _untar(archive, unpacked, url)
        else:  # a plain file: it is the (single) expected file
            os.replace(archive, unpacked / files[0])
        src = unpacked / str(remote.get("archive_dir") or "")
        absent = [f for f in files if not (src / f).is_file()]
        if absent:
            raise DataError(
                f"{url}: the archive has no {', '.join(absent)} under "
                f"{remote.get('archive_dir') or 'its top level'}"
            )
        for name, expected in (remote.get("files_sha256") or {}).items():
            got = file_sha256(src / name)
            if got != str(expected).lower():
                raise DataError(
                    f"{url}: {name} has SHA-256 {got}, expected {expected}; nothing was installed"
                )
        folder.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in src.iterdir() if p.is_file() and p.name not in files)
        for name in [*others, *files]:  # the files loaders look for go last
            os.replace(src / name, folder / name)
        print(f"downloaded {url} into {folder}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kind(url: str) -> str:
    u = url.lower().split("?")[0]
    if u.endswith(".zip"):
        return "zip"
    if u.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        return "tar"
    return "file"


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    hint: str = "",
) -> None:
    """Stream ``url`` to ``dest`` with a progress bar and verify its length and checksum.

    On any failure ``dest`` is deleted and a :class:`DataError` raised (``hint`` says what the
    user can do instead).
    """
    from tqdm.auto import tqdm

    suffix = f"; {hint}" if hint else ""
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            total = int(resp.headers.get("Content-Length") or 0) or None
            with (
                open(dest, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None,
                    leave=False,
                ) as bar,
            ):
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        if total is not None and written != total:
            raise _Truncated(f"got {written} of {total} bytes")
    except (_Truncated, http.client.IncompleteRead) as e:
        dest.unlink(missing_ok=True)
        detail = e if isinstance(e, _Truncated) else f"got {len(e.partial) + written} bytes"
        raise DataError(
            f"{url}: truncated transfer ({detail}); the partial file was deleted{suffix}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download {url} ({reason}){suffix}") from None
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected and hashes[algo].hexdigest() != str(expected).lower():
            dest.unlink(missing_ok=True)
            raise DataError(
                f"{url}: checksum mismatch ({algo} {hashes[algo].hexdigest()}, expected "
                f"{expected}); the downloaded file was deleted{suffix}"
            )


class _Truncated(Exception):
    pass


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _unzip(archive: Path, dest: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise DataError(f"{url}: archive member {info.filename!r} escapes the folder")
            z.extractall(dest)
    except zipfile.BadZipFile as e:
        raise DataError(f"{url}: not a valid zip archive ({e})") from None


def _untar(archive: Path, dest: Path, url: str) -> None:
    try:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{url}: not a valid tar archive ({e})") from None
