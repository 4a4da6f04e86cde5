"""Side-by-side runs of RecBole 1.2.1 on exactly our data, split and hyper-parameters.

Used by ``python -m benchmarks.runner --compare recbole``. For a bench entry with a ``recbole:``
block, the parent side (:func:`compare`) rebuilds the entry's split from its checkpoint's config,
writes it as RecBole atomic files, translates our model and training config into RecBole's
keys, and runs RecBole in a subprocess of the RecBole interpreter (``--recbole-python``: by
default ``.venv-recbole/bin/python`` made by ``make recbole-venv``; the interpreter may also be
ours if ``recbole`` is installed in it). The child side (:func:`child_main`, this file run as a
script) imports only the standard library, numpy, torch and recbole.

Same split: general models get three files (``benchmark_filename: [train, valid, test]``),
which RecBole uses as given. Sequential models get one file whose timestamps are our event
order, so RecBole's leave-one-out by time (``LS: valid_and_test``) cuts exactly our split.

RecBole's breakages on current stacks are handled here, never by editing its files:
``ray`` (a hard import of ``recbole.quick_start``; we never import it and the venv installs
recbole with ``--no-deps``), ``torch.load`` defaulting to ``weights_only=True`` (its checkpoints
pickle a Config: we pass ``weights_only=False`` for its own files), numpy 2's removed aliases
(``np.float_`` etc., re-created when missing), scipy >= 1.12's ``dok_matrix`` without the
private ``_update`` LightGCN calls (added back over its ``_dict``), and ``Config`` parsing
``sys.argv`` (cleared).
pandas 3's copy-on-write turns RecBole's ``fillna(inplace=True)`` into a no-op; our atomic
files have no missing values, and the venv pins pandas < 3 anyway.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` from /proc, which restarts at exec.
    ``ru_maxrss`` does not: a child started by vfork + exec inherits its parent's peak (the bench
    parent's fp32 peak matmul made every entry read >= 661 MiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


REPO = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO / ".venv-recbole" / "bin" / "python"
SEQUENTIAL = {"SASRec", "GRU4Rec", "BERT4Rec"}


# -- parent side (our environment) --------------------------------------------------------------
def recbole_config(config: dict[str, Any], rb_model: str, cap: dict[str, Any]) -> dict[str, Any]:
    """RecBole keys equal to our run's optimizer, batching, evaluation and model settings."""
    m, d, ev = config["model"], config["data"], config["eval"]
    monitor = str(ev["monitor"]).split("/", 1)[1]  # val/mrr@10 -> mrr@10
    metric, _, k = monitor.partition("@")
    names = {
        "recall": "Recall",
        "mrr": "MRR",
        "ndcg": "NDCG",
        "hit": "Hit",
        "precision": "Precision",
    }
    out: dict[str, Any] = {
        "seed": int(config["seed"]),
        "reproducibility": True,
        "learner": "adam",
        "learning_rate": float(config["optim"]["lr"]),
        "weight_decay": float(config["optim"].get("weight_decay", 0.0)),
        "train_batch_size": int(d["batch_size"]),
        "epochs": int(cap.get("epochs", config["trainer"]["max_epochs"])),
        "stopping_step": int(
            cap.get("stopping_step", config["callbacks"]["early_stopping"]["patience"])
        ),
        "eval_step": 1,
        "metrics": [names[x] for x in ev["metrics"] if x in names],
        "topk": list(ev["topk"]),
        "valid_metric": f"{names[metric]}@{k}",
        "eval_batch_size": int(cap.get("eval_batch_size", 4096)),
    }
    if rb_model == "BPR":
        out["embedding_size"] = m["embedding_size"]
    elif rb_model == "NeuMF":
        out.update(
            mf_embedding_size=m["mf_embedding_size"],
            mlp_embedding_size=m["mlp_embedding_size"],
            mlp_hidden_size=list(m["mlp_hidden_size"]),
            dropout_prob=m["dropout"],
            mf_train=True,
            mlp_train=True,
            use_pretrain=False,
        )
    elif rb_model == "MultiVAE":
        dims = list(m["hidden_dims"])
        out.update(
            mlp_hidden_size=dims[:-1],
            latent_dimension=dims[-1],
            dropout_prob=m["dropout"],
            anneal_cap=m["anneal_cap"],
            total_anneal_steps=m["total_anneal_steps"],
        )
    elif rb_model == "LightGCN":
        # require_pow: RecBole's EmbLoss then is sum ||e||^2 / B / 2 over the batch's ego
        # embeddings, our (and the paper's) regulariser
        out.update(
            embedding_size=m["embedding_size"],
            n_layers=m["num_layers"],
            reg_weight=m["reg"],
            require_pow=True,
        )
    elif rb_model == "SASRec":
        out.update(
            n_layers=m["n_layers"],
            n_heads=m["n_heads"],
            hidden_size=m["hidden_size"],
            inner_size=m["inner_size"],
            hidden_dropout_prob=m["dropout"],
            attn_dropout_prob=m["attn_dropout"],
            hidden_act=m["activation"],
            layer_norm_eps=m["layer_norm_eps"],
            initializer_range=m["init_std"],
            loss_type="CE",
            MAX_ITEM_LIST_LENGTH=int(m["max_len"]),
        )
    else:
        raise ValueError(f"no translation of our config to RecBole's {rb_model}")
    if rb_model in SEQUENTIAL:
        # RecBole loads only user_id and item_id by default; its LS split orders by timestamp
        out["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
        out["train_neg_sample_args"] = None
        out["eval_args"] = {
            "split": {"LS": "valid_and_test"},
            "group_by": "user",
            "order": "TO",
            "mode": "full",
        }
        out["repeatable"] = True
    else:
        neg = int(m.get("num_negatives", 1) or 1)
        out["train_neg_sample_args"] = {
            "distribution": "uniform",
            "sample_num": neg,
            "alpha": 1.0,
            "dynamic": False,
            "candidate_num": 0,
        }
        out["eval_args"] = {
            "split": {"RS": [0.8, 0.1, 0.1]},
            "group_by": "user",
            "order": "RO",
            "mode": "full",
        }
        out["repeatable"] = False
    out.update(cap.get("config", {}))
    return out


def write_atomic(split, folder: Path, name: str, sequential: bool) -> dict[str, int]:
    """Our split as RecBole atomic files (ids are our internal ids + 1)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\ttimestamp:float\n"

    def rows(inter, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        perm = inter.order()
        return (
            inter.user[perm] + 1,
            inter.item[perm] + 1,
            np.arange(len(perm), dtype=np.int64) + offset,
        )

    def dump(path: Path, parts) -> None:
        u = np.concatenate([p[0] for p in parts])
        i = np.concatenate([p[1] for p in parts])
        t = np.concatenate([p[2] for p in parts])
        with open(path, "w") as f:
            f.write(header)
            np.savetxt(f, np.stack([u, i, t], 1), fmt="%d", delimiter="\t")

    n_tr, n_va = len(split.train), len(split.val)
    tr, va, te = rows(split.train, 0), rows(split.val, n_tr), rows(split.test, n_tr + n_va)
    if (
        sequential
    ):  # one file, times in our order: RecBole's LS by time cuts our leave-one-out split
        dump(folder / f"{name}.inter", [tr, va, te])
    else:
        for suffix, part in (("train", tr), ("valid", va), ("test", te)):
            dump(folder / f"{name}.{suffix}.inter", [part])
    return {"train": n_tr, "valid": n_va, "test": len(split.test)}


def compare(
    entry: dict[str, Any],
    ours: dict[str, Any],
    python: str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run RecBole on ``entry``'s data and settings; ratios and metric differences vs ``ours``."""
    from recsys.training.runs import open_run

    rb = dict(entry["recbole"])
    rb_model = rb["model"]
    # absolute, not resolved: a venv's python is a symlink whose target is outside the venv
    py = Path(python).absolute() if python else DEFAULT_PYTHON
    if not python and not py.exists() and importlib.util.find_spec("recbole") is not None:
        py = Path(sys.executable)  # `pip install -e '.[compare]'`: RecBole in our environment
    if not py.exists():
        raise RuntimeError(f"no RecBole interpreter at {py} (run `make recbole-venv`)")
    run = open_run(ours["best_checkpoint"])
    config, dm = run.config, run.datamodule
    work = Path(ours["run_dir"]) / "recbole"
    name = "bench"
    sequential = rb_model in SEQUENTIAL
    sizes = write_atomic(dm.data, work / "data" / name, name, sequential)
    cfg = recbole_config(config, rb_model, rb)
    cfg.update(
        data_path=str(work / "data"),
        checkpoint_dir=str(work / "saved"),
        use_gpu=False,
        gpu_id="",
        worker=0,
        show_progress=False,
        state="WARNING",
    )
    if not sequential:
        cfg["benchmark_filename"] = ["train", "valid", "test"]
    spec = {"model": rb_model, "dataset": name, "config": cfg, "threads": rb.get("threads")}
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    out_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(py), str(Path(__file__).resolve()), str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
    )
    (work / "recbole.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"RecBole exited {proc.returncode}: {proc.stderr[-1500:]}")
    res = json.loads(out_path.read_text())
    res["process_wall_s"] = round(time.perf_counter() - t0, 2)
    res["split_sizes_written"] = sizes

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    t = ours["timing"]
    res["ratios"] = {
        "epoch_cpu_time": ratio(res.get("train_cpu_s_per_epoch"), t.get("train_cpu_s_per_epoch")),
        "epoch_time": ratio(res.get("train_s_per_epoch"), t.get("train_s_per_epoch")),
        # a validation pass inside training, both sides: full ranking over every user
        "eval_time": ratio(res.get("valid_s_mean"), t.get("val_s_per_epoch")),
        "eval_cpu_time": ratio(res.get("valid_cpu_s_mean"), t.get("val_cpu_s_per_epoch")),
        "eval_time_standalone": ratio(res.get("valid_s_mean"), ours["eval"]["full_pass_s"]),
        "rss": ratio(res.get("peak_rss_mb"), ours.get("peak_rss_mb")),
    }
    notes = [
        "RecBole runs in its own process and interpreter (numpy 1.26, pandas < 3, no ray), reading "
        "our split from atomic files; its hyper-parameters are translated from our run's config "
        "(benchmarks/runner/recbole.py: recbole_config).",
        "eval-time ratio: RecBole's mean validation pass over our validation pass (median), both "
        "full ranking over all users inside the training loop.",
    ]
    if rb.get("epochs") is not None:
        notes.append(
            f"{rb_model}: RecBole capped at {rb['epochs']} epochs for time; its quality "
            "is not converged, compare epoch times rather than metrics."
        )
    res["notes"] = notes + list(rb.get("notes", []))
    res["status"] = "ok"
    return res


# -- child side (the RecBole interpreter) -------------------------------------------------------
def _shims() -> None:
    """Make RecBole 1.2.1 run on torch >= 2.6 and numpy 2 without touching its files."""
    import numpy as np
    import torch

    if not getattr(torch.load, "_recsys_shim", False):
        original = torch.load

        def load(*args, **kwargs):
            kwargs.setdefault("weights_only", False)  # RecBole's own checkpoints pickle its Config
            return original(*args, **kwargs)

        load._recsys_shim = True  # type: ignore[attr-defined]
        torch.load = load
    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if not hasattr(np, alias):
            setattr(np, alias, getattr(np, target))
    # scipy >= 1.12's dok_matrix keeps its entries in ``_dict`` and dropped the private
    # ``_update`` that RecBole's graph models (LightGCN's get_norm_adj_mat) call
    from scipy.sparse import dok_matrix

    if not hasattr(dok_matrix, "_update") and hasattr(dok_matrix((1, 1)), "_dict"):
        dok_matrix._update = lambda self, data: self._dict.update(data)  # type: ignore[attr-defined]
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value overrides from argv


def child_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    _shims()
    import numpy as np
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    t_start = time.perf_counter()
    config = Config(model=spec["model"], dataset=spec["dataset"], config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_s = time.perf_counter() - t0
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    train_s: list[float] = []
    valid_s: list[float] = []
    train_cpu: list[float] = []  # process CPU seconds: robust to a busy machine
    valid_cpu: list[float] = []
    orig_train, orig_valid = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = orig_train(*a, **k)
        train_s.append(time.perf_counter() - t)
        train_cpu.append(time.process_time() - c)
        return out

    def timed_valid(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = orig_valid(*a, **k)
        valid_s.append(time.perf_counter() - t)
        valid_cpu.append(time.process_time() - c)
        return out

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    t0 = time.perf_counter()
    best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    eval_s = time.perf_counter() - t0
    result = {
        "model": spec["model"],
        "test": {k.lower(): float(v) for k, v in test.items()},
        "best_valid_score": float(best_score),
        "epochs_run": len(train_s),
        "epochs_cap": int(config["epochs"]),
        "train_s_per_epoch": round(float(np.median(train_s)), 4) if train_s else None,
        "valid_s_mean": round(float(np.mean(valid_s)), 4) if valid_s else None,
        "train_cpu_s_per_epoch": round(float(np.median(train_cpu)), 4) if train_cpu else None,
        "valid_cpu_s_mean": round(float(np.mean(valid_cpu)), 4) if valid_cpu else None,
        "eval_s": round(eval_s, 4),
        "fit_s": round(fit_s, 2),
        "data_s": round(data_s, 2),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "peak_rss_mb": peak_rss_mb(),
        "n_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "data": {
            "users": int(dataset.user_num) - 1,
            "items": int(dataset.item_num) - 1,
            "train": int(train_data._dataset.inter_num),
            "valid": int(valid_data._dataset.inter_num),
            "test": int(test_data._dataset.inter_num),
        },
        "versions": {
            "recbole": recbole.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
        },
    }
    Path(out_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: this folder's recbole.py would shadow the package
    child_main(sys.argv[1], sys.argv[2])
