"""``recsys-export``: turn a trained checkpoint into a self-contained serving artifact.

    recsys-export run=outputs/<date>/<time>                      # -> <run>/artifact/
    recsys-export ckpt_path=<run>/checkpoints/best.ckpt out=artifacts/mf

The data and split are rebuilt from the config stored in the checkpoint (as ``recsys-eval``
does) to recover the external id maps and each user's history. The layout of the artifact is
described in :mod:`recsys.serving.artifact`; ``recsys.load(<dir>)`` serves it. Scorers (TorchScript and
ONNX) are traced at fixed shapes and verified against the model in memory on real users before
they are written; a model that does not trace cleanly gets none, and the reason is recorded in
``artifact.json``. With ``$RECSYS_ARTIFACT_KEY`` set, the artifact is signed.

Never half-finished: the artifact is written to a fresh folder beside ``out``
(``.<name>.export-<pid>``), read back and verified, then swapped in with one rename (an atomic
exchange where the OS offers it; otherwise the previous artifact is moved aside first). A reader
of ``out`` sees the previous artifact, or the new one, complete; files left there by an earlier
export never enter the new manifest. A killed export leaves only its temporary folder, which the
next export into the same place removes once its process is gone.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.data.batches import UserBatch
from recsys.errors import ConfigError
from recsys.models.base import Recommender
from recsys.serving import features as feature_file
from recsys.serving.artifact import (
    FILES,
    FORMAT,
    MANIFEST,
    SIGNATURE,
    VERSION,
    artifact_key,
    chunks,
    pack,
    read_artifact,
    sha256,
    signature_record,
)
from recsys.serving.features import item_vectors

log = logging.getLogger("recsys")


class Scorer(nn.Module):
    """The traced function: (users (R,), items (N,), offsets (R+1,)) -> (R, num_items) scores."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, users: Tensor, items: Tensor, offsets: Tensor) -> Tensor:
        return self.model.score(UserBatch(users, items, offsets)).float()


def embeddings(model: Recommender) -> dict[str, np.ndarray]:
    """User/item embedding tables: ``model.embeddings()`` if the model exposes them; for a model
    with item attributes, its item vectors (ids and attributes, what it scores with: an id table
    alone would leave out what a cold item is made of); else the unique ``nn.Embedding`` whose
    row count is the number of users (items, plus up to 2 padding rows)."""
    if model.exposes_embeddings:
        return {k: v.detach().float().cpu().numpy() for k, v in model.embeddings().items()}
    if model.feats.item and item_vectors(model) is not None:
        with torch.no_grad():
            return {"item": item_vectors(model).detach().float().cpu().numpy()}
    found: dict[str, list[Tensor]] = {"user": [], "item": []}
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            if m.num_embeddings == model.num_users:
                found["user"].append(m.weight)
            elif 0 <= m.num_embeddings - model.num_items <= 2:
                found["item"].append(m.weight[: model.num_items])
    return {k: v[0].detach().float().cpu().numpy() for k, v in found.items() if len(v) == 1}


def _history_csr(split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every known event (train, validation, test and fold-in parts) as per-user rows in time order."""
    inter = split.train
    for part in (
        split.val,
        split.test,
        getattr(split, "val_input", None),
        getattr(split, "test_input", None),
    ):
        if part is not None and len(part):
            inter = inter.concat(part)
    csr = inter.to_csr()
    return csr.indptr, csr.indices, inter.item_counts()


def _ids(values: np.ndarray) -> np.ndarray:
    """External ids as an array numpy saves without pickling (objects become strings)."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _eager_scores(model: nn.Module, users: list[int], histories: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        b = UserBatch.from_lists(users, [h.tolist() for h in histories])
        return model.score(b).float().numpy()


def _probe_sets(indptr: np.ndarray, rows: int, length: int, seed: int = 0) -> list[list[int]]:
    """Packings of real users for tracing and verifying a scorer.

    The first (the trace example) holds the longest histories, so shape decisions a model takes
    from its input (e.g. trimming padding columns) are taken for the widest case; the others
    (random users, the shortest histories, a single user) must then score identically.
    """
    lengths = np.diff(indptr)
    users = np.flatnonzero(lengths > 0)
    by_len = users[np.argsort(-lengths[users], kind="stable")]
    rng = np.random.default_rng(seed)
    picks = rng.permutation(users)
    out = []
    for order in (by_len, picks, by_len[::-1]):
        s, e = next(iter(chunks(lengths[order].tolist(), rows, length)))
        out.append(order[s:e].tolist())
    out.append(picks[:1].tolist())
    return out


def _verify(
    run, model: nn.Module, probes: list[list[int]], hist, rows: int, length: int
) -> str | None:
    """None if ``run(users, items, offsets)`` matches the eager model on every probe, else why not."""
    for users in probes:
        histories = [hist(u) for u in users]
        want = _eager_scores(model, users, histories)
        u, items, offsets = pack(rows, length, users, histories)
        got = run(u, items, offsets)[: len(users)]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            err = (
                float(np.abs(got - want).max()) if got.shape == want.shape else f"shape {got.shape}"
            )
            return f"scores differ from the eager model (max abs error {err}) on a probe batch"
    return None


def _write_torchscript(scorer: Scorer, example, path: Path, verify) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(scorer, example, check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - the model does not trace
        path.unlink(missing_ok=True)
        return (
            f"tracing failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        )

    def run(u, items, offsets):
        with torch.no_grad():
            return loaded(
                torch.from_numpy(u), torch.from_numpy(items), torch.from_numpy(offsets)
            ).numpy()

    reason = verify(run)
    if reason:
        path.unlink(missing_ok=True)
    return reason


def _write_onnx(scorer: Scorer, example, path: Path, verify) -> str | None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "onnx is not installed (pip install -e '.[export]')"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                scorer,
                example,
                str(path),
                input_names=["users", "items", "offsets"],
                output_names=["scores"],
                dynamo=False,
                opset_version=17,
            )
    except Exception as e:  # noqa: BLE001 - an operator without an ONNX mapping, ...
        path.unlink(missing_ok=True)
        return f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    try:
        import onnxruntime as ort
    except ImportError:
        return None  # written, not verified
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        path.unlink(missing_ok=True)
        return f"onnxruntime cannot load the exported graph: {str(e).splitlines()[0][:200]}"
    names = {i.name for i in sess.get_inputs()}

    def run(u, items, offsets):
        feed = {
            k: v for k, v in (("users", u), ("items", items), ("offsets", offsets)) if k in names
        }
        return sess.run(None, feed)[0]

    reason = verify(run)
    if reason:
        path.unlink(missing_ok=True)
    return reason


def export(
    ckpt_path: str | Path,
    out: str | Path,
    data_root: str | None = None,
    run_dir: str | Path | None = None,
    rows: int = 33,
    torchscript: bool = True,
    onnx: bool = True,
    pseudonymize_users: bool = False,
    pseudonym_key_env: str = "RECSYS_PSEUDONYM_KEY",
    trust: list[str] | None = None,
    allow_unfinished: bool = False,
) -> Path:
    """Write the artifact of ``ckpt_path`` (a checkpoint, or a run directory: its best
    checkpoint) to ``out`` and return ``out``. ``trust`` and ``allow_unfinished``: as
    :func:`~recsys.training.runs.open_run`."""
    from recsys.training.runs import open_run

    run = open_run(ckpt_path, data_root=data_root, trust=trust, allow_unfinished=allow_unfinished)
    model = run.module.model.eval().cpu()
    return export_model(
        model,
        run.config,
        run.datamodule.data,
        run.datamodule.fingerprint,
        out,
        run_dir=Path(run_dir) if run_dir else run.checkpoint_path.resolve().parent.parent,
        rows=rows,
        torchscript=torchscript,
        onnx=onnx,
        source=str(run.checkpoint_path.resolve()),
        pseudonymize_users=pseudonymize_users,
        pseudonym_key_env=pseudonym_key_env,
    )


def export_model(
    model: Recommender,
    config: dict[str, Any],
    split,
    fingerprint: str,
    out: str | Path,
    run_dir: str | Path | None = None,
    rows: int = 33,
    torchscript: bool = True,
    onnx: bool = True,
    source: str | None = None,
    pseudonymize_users: bool = False,
    pseudonym_key_env: str = "RECSYS_PSEUDONYM_KEY",
) -> Path:
    """Write the artifact of an in-memory ``model`` trained on ``split`` (``config``: the run's).

    ``pseudonymize_users``: ``ids.npz`` holds HMAC-SHA256 keyed hashes of the external user ids
    (:func:`recsys.serving.artifact.pseudonym`, key from the environment variable ``pseudonym_key_env``)
    instead of the ids; ``recommend`` then takes those hashes."""
    user_ids = _ids(split.train.user_ids)
    if pseudonymize_users:
        from recsys.serving.artifact import pseudonym

        key = os.environ.get(pseudonym_key_env, "")
        if not key:
            raise ConfigError(
                f"pseudonymize_users=true needs the key in the environment variable {pseudonym_key_env} (unset or empty)"
            )
        user_ids = np.array([pseudonym(u, key) for u in user_ids.tolist()])
    if rows < 2:
        raise ConfigError(f"rows must be >= 2 (one real row and the filler), got {rows}")
    model = model.eval().cpu()
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(out)
    tmp = out.parent / f".{out.name}{_TMP}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own, from an export that failed
    tmp.mkdir()
    try:
        _write(
            model,
            config,
            split,
            fingerprint,
            tmp,
            run_dir=run_dir,
            rows=rows,
            torchscript=torchscript,
            onnx=onnx,
            source=source,
            user_ids=user_ids,
            pseudonymized=pseudonym_key_env if pseudonymize_users else None,
        )
        read_artifact(tmp)  # what was written reads back, checksums and signature included
        _fsync_tree(tmp)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a swap; a failed export's files
    return out


def _write(
    model: Recommender,
    config: dict[str, Any],
    split,
    fingerprint: str,
    out: Path,
    run_dir: str | Path | None,
    rows: int,
    torchscript: bool,
    onnx: bool,
    source: str | None,
    user_ids: np.ndarray,
    pseudonymized: str | None,
) -> None:
    """Every file of the artifact into the empty folder ``out``, the manifest and its digest
    (signed with ``$RECSYS_ARTIFACT_KEY`` when set) last."""
    import yaml

    indptr, indices, counts = _history_csr(split)
    lengths = np.diff(indptr)
    mean_len = max(1, math.ceil(float(lengths[lengths > 0].mean()))) if (lengths > 0).any() else 1
    length = int(max(int(lengths.max(initial=1)), (rows - 1) * mean_len))

    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "weights.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    np.savez(out / "ids.npz", user_ids=user_ids, item_ids=_ids(split.train.item_ids))
    np.savez_compressed(out / "history.npz", indptr=indptr, indices=indices, item_counts=counts)
    emb = embeddings(model)
    if emb:
        np.savez(out / "embeddings.npz", **emb)
    features = feature_file.record(model)  # the fields the model uses; no ids
    if features is not None:
        feature_file.write(out / feature_file.FILE, features)
    for name in ("metrics.json", "manifest.json"):
        if run_dir is not None and (Path(run_dir) / name).is_file():
            shutil.copyfile(Path(run_dir) / name, out / name)

    def hist(u: int) -> np.ndarray:
        return indices[indptr[u] : indptr[u + 1]]

    probes = _probe_sets(indptr, rows, length)
    first = probes[0]
    supports_history = bool(model.scores_history)  # declared; the model contract test checks it
    scorer = Scorer(model).eval()
    example = tuple(
        torch.from_numpy(a) for a in pack(rows, length, first, [hist(u) for u in first])
    )

    def verify(run):
        return _verify(run, model, probes, hist, rows, length)

    scorer_meta: dict[str, Any] = {
        "rows": rows,
        "length": length,
        "torchscript": None,
        "onnx": None,
    }
    for kind, enabled, fname, write in (
        ("torchscript", torchscript, "scorer.ts", _write_torchscript),
        ("onnx", onnx, "scorer.onnx", _write_onnx),
    ):
        reason = write(scorer, example, out / fname, verify) if enabled else "disabled"
        if reason is None:
            scorer_meta[kind] = fname
        else:
            scorer_meta[f"{kind}_error"] = reason
            log.warning("no %s scorer for %s: %s", kind, config["model"]["_target_"], reason)

    files = sorted(p.name for p in out.iterdir())  # a fresh folder: only what was written here
    meta = {
        "format": FORMAT,
        # version 3 adds features.json; id-only artifacts stay readable by earlier recsys
        "version": VERSION if features is not None else 2,
        "model": config["model"],
        "num_users": int(model.num_users),
        "num_items": int(model.num_items),
        "supports_history": supports_history,
        "scorer": scorer_meta,
        "embeddings": sorted(emb),
        # model.embeddings(): tables the model declares (MF: score = user · item); otherwise the
        # raw nn.Embedding tables, which need not form a dot-product space (NCF's MLP branch)
        "embeddings_source": (
            "model.embeddings()"
            if model.exposes_embeddings
            else "model.item_vectors()"
            if model.feats.item and emb
            else "nn.Embedding"
            if emb
            else None
        ),
        "data": {"name": config["data"].get("name"), "fingerprint": fingerprint},
        "source_checkpoint": source,
        # user ids in ids.npz are keyed hashes (the key's variable name, never the key)
        "pseudonymized_users": (
            {"method": "hmac-sha256", "key_env": pseudonymized} if pseudonymized else None
        ),
        "files": {f: {"sha256": sha256(out / f), "bytes": (out / f).stat().st_size} for f in files},
    }
    manifest = (json.dumps(meta, indent=2) + "\n").encode()
    (out / MANIFEST).write_bytes(manifest)
    (out / SIGNATURE).write_bytes(signature_record(manifest, artifact_key()))


_TMP, _OLD = ".export-", ".replaced-"  # temporary sibling folders: .<name><marker><pid>


def _check_out(out: Path) -> None:
    """``out`` may be absent, an empty folder, or an artifact holding nothing else (the export
    replaces the folder whole, so it must hold nothing of the user's, e.g. segments/)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder; choose an empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise ConfigError(
            f"out: {out} exists and is not an artifact directory; choose an empty folder"
        )
    own = {MANIFEST, SIGNATURE, *FILES}
    other = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name not in own)
    if other:
        raise ConfigError(
            f"out: {out} holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''} besides "
            "an artifact, which the export would delete with the previous artifact; move it "
            "away or choose another folder"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process runs one export at a time: an older one of its own failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_exports(out: str | Path) -> list[Path]:
    """Remove the temporary folders that exports into ``out`` left behind when their process
    died (``.<name>.export-<pid>``, ``.<name>.replaced-<pid>``); those of live processes stay.
    Returns the folders removed. (A process id reused by an unrelated live process keeps its
    folder until that process ends.)"""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for marker in (_TMP, _OLD):
        prefix = f".{out.name}{marker}"
        for p in out.parent.glob(f"{prefix}*"):
            pid = p.name[len(prefix) :]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _fsync_tree(folder: Path) -> None:
    """Flush the folder's files and the folder itself to disk before it is renamed into place
    (a crash of the machine, not only of the process, then leaves no empty files behind)."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the OS or the file system does not offer it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except Exception:  # noqa: BLE001 - no C library to look in (Windows), no renameat2 (macOS)
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``. A reader of ``out`` sees the previous
    artifact or the new one; where no atomic exchange exists, ``out`` is briefly absent (never
    partial) while the previous artifact is moved aside."""
    _check_out(out)  # it may have changed while the export ran
    if out.is_dir() and any(out.iterdir()):
        if not _exchange(tmp, out):
            old = out.parent / f".{out.name}{_OLD}{os.getpid()}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # the previous artifact stays
                raise
            tmp = old
        shutil.rmtree(tmp)  # the previous artifact, now beside out
    else:
        os.replace(tmp, out)  # onto nothing, or onto an empty folder
    _fsync_dir(out.parent)
