"""Every configs/experiment/*.yaml runs end to end on tiny stand-in data.

Each experiment is composed as the CLI composes it (``experiment=<name>``), its dataset replaced by
a tiny stand-in written in the dataset's official file format under a temporary ``data.root``
(u.data and u1.base / u1.test for MovieLens-100K, ratings.dat for ML-1M, ratings.csv for ML-20M,
Beauty.txt for Amazon Beauty), all from one small synthetic log with ratings and timestamps. The
experiment's data config (its parser, rating threshold, k-core, split, sequence settings) and its
model, optimiser, evaluation and callbacks stay as written; the only other changes are the
schedule (a few batches of one validation period), for strong generalization fewer held-out
users (the tiny log has a few hundred users, not 1,200 or 20,000), and for losses with hundreds
of negatives of their own per position a smaller batch (the same loss, a lighter gather). Then
``recsys.training.train.train`` prepares the data, builds the trainer, takes a few steps, selects on
validation and tests, and metrics.json must hold finite validation and test metrics.

A second check composes each experiment without any test override and asserts it still carries
its own settings (its values and the model / data / eval configs it swaps in), so the runs would
fail if the experiment file stopped being applied.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.data.synthetic import generate
from recsys.training.train import train
from tests.conftest import compose_config

EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))

# The tiny log every stand-in is written from: enough users for 2 x HELDOUT_USERS held-out users
# and the ML-1M 10-core, enough items for the strong-generalization cut-offs (K up to 100).
N_USERS, N_ITEMS, MEAN_LENGTH = 240, 160, 25.0
HELDOUT_USERS = 25  # data.n_heldout_users for split=holdout_users (600 or 10,000 as written)
EPOCH0 = 880_000_000  # timestamps in the MovieLens range (seconds)

# Test-only overrides of every run: the experiment's schedule cut to a few batches.
FAST = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "++trainer.limit_train_batches=2",
    "data.download=false",  # a missing stand-in file fails loudly instead of fetching the real one
]


# -- the stand-in files, one writer per dataset config the experiments name ------------------------
def _log() -> pd.DataFrame:
    """user, item (1-based), integer time (seconds) and a 1-5 star rating; ~60% are >= 4 so
    ML-20M's rating threshold keeps most users."""
    df, _ = generate(n_users=N_USERS, n_items=N_ITEMS, n_groups=4, mean_length=MEAN_LENGTH, seed=0)
    rng = np.random.default_rng(0)
    df = df.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
    df["time"] = (df["time"].to_numpy() + EPOCH0).astype(np.int64)
    df["rating"] = rng.choice([1, 2, 3, 4, 5], size=len(df), p=[0.05, 0.1, 0.25, 0.35, 0.25])
    return df


def _write_ml100k(folder: Path, df: pd.DataFrame) -> None:
    """u.data (tab: user item rating timestamp) and the fold-1 files u1.base / u1.test that
    partition it, 20% of each user's ratings in the test file."""
    cols = ["user", "item", "rating", "time"]
    df[cols].to_csv(folder / "u.data", sep="\t", header=False, index=False)
    rng = np.random.default_rng(1)
    test = rng.random(len(df)) < 0.2
    df.loc[~test, cols].to_csv(folder / "u1.base", sep="\t", header=False, index=False)
    df.loc[test, cols].to_csv(folder / "u1.test", sep="\t", header=False, index=False)


def _write_ml100k_attributes(folder: Path, df: pd.DataFrame) -> None:
    """u.user (id|age|gender|occupation|zip) and u.item (id|title|release date|video date|url|19
    genre flags), for the experiments that read attributes."""
    users = sorted(df["user"].unique())
    (folder / "u.user").write_text(
        "".join(
            f"{u}|{18 + u % 50}|{'MF'[u % 2]}|{('writer', 'doctor')[int(u % 3 == 0)]}|0\n"
            for u in users
        )
    )
    flags = lambda i: "|".join("1" if g == int(i) % 19 else "0" for g in range(19))  # noqa: E731
    (folder / "u.item").write_text(
        "".join(
            f"{i}|Movie {i} ({1990 + i % 9})|01-Jan-{1990 + i % 9}||http://x|{flags(i)}\n"
            for i in sorted(df["item"].unique())
        ),
        encoding="latin-1",
    )


def _write_ml1m(folder: Path, df: pd.DataFrame) -> None:
    """ratings.dat: UserID::MovieID::Rating::Timestamp."""
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in df[["user", "item", "rating", "time"]].values]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")


def _write_movielens_csv(folder: Path, df: pd.DataFrame) -> None:
    """ratings.csv with header userId,movieId,rating,timestamp (half-star float ratings)."""
    out = df.rename(columns={"user": "userId", "item": "movieId", "time": "timestamp"})
    out = out.assign(rating=out["rating"].astype(float))
    out[["userId", "movieId", "rating", "timestamp"]].to_csv(folder / "ratings.csv", index=False)


def _write_user_sequences(folder: Path, df: pd.DataFrame) -> None:
    """Beauty.txt: one line per user, the user id then the items in time order (S3-Rec / ICLRec
    format)."""
    lines = [
        " ".join(map(str, [user, *group["item"].tolist()]))
        for user, group in df.groupby("user", sort=True)
    ]
    (folder / "Beauty.txt").write_text("\n".join(lines) + "\n")
    attributes = {str(i): [1 + int(i) % 7, 10 + int(i) % 3] for i in sorted(df["item"].unique())}
    (folder / "Beauty_item2attributes.json").write_text(json.dumps(attributes))


# data.name -> writer; the files land in <root>/<data.folder>/ as named by the data config
STANDINS = {
    "ml-100k": lambda folder, df: (_write_ml100k(folder, df), _write_ml100k_attributes(folder, df)),
    "ml-100k-fold": _write_ml100k,
    "ml-1m": _write_ml1m,
    "ml-20m": _write_movielens_csv,
    "amazon-beauty": _write_user_sequences,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    df = _log()
    for name, write in STANDINS.items():
        folder = root / str(compose_config("train", [f"data={name}"]).data.folder)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder, df)
    return root


@functools.cache
def composed(name: str | None = None):
    """The config ``recsys-train [experiment=<name>]`` composes, without any test override."""
    return compose_config("train", [f"experiment={name}"] if name else [])


def run_overrides(name: str, root: Path) -> list[str]:
    """The overrides of the tiny run of experiment ``name``."""
    cfg = composed(name)
    assert cfg.data.name in STANDINS, f"no stand-in for dataset {cfg.data.name!r}: add a writer"
    # one validation period: the experiment's check_val_every_n_epoch is kept, so best.ckpt exists
    epochs = int(cfg.trainer.get("check_val_every_n_epoch") or 1)
    overrides = [f"experiment={name}", f"data.root={root}", f"trainer.max_epochs={epochs}", *FAST]
    if cfg.data.split == "holdout_users":
        overrides.append(f"data.n_heldout_users={HELDOUT_USERS}")
    model = cfg.model
    if model.get("num_negatives", 0) >= 64 and model.get("loss") in ("bce", "gbce"):
        # K negatives of its own per position: an (N, K, d) gather of ~1 GB at the experiment's
        # batch of 128 sequences; smaller batches keep the run to seconds (same loss and model)
        if not model.get("shared_negatives", False):
            overrides.append(f"data.batch_size={min(int(cfg.data.batch_size), 16)}")
    return overrides


# -- the experiment file is applied ---------------------------------------------------------------
def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _own_settings(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's own values (dotted key -> value) and its group overrides (group -> option)."""
    raw = OmegaConf.to_container(OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml"))
    assert isinstance(raw, dict)
    groups = {}
    for entry in raw.pop("defaults", None) or []:
        if isinstance(entry, dict):
            for key, option in entry.items():
                if key.startswith("override /"):
                    groups[key.removeprefix("override /")] = option
    return _leaves(raw), groups


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_settings_are_applied(name):
    cfg, plain = composed(name), composed()
    values, groups = _own_settings(name)
    assert values or groups, f"{name}: the experiment sets nothing"
    for key, expected in values.items():
        got = OmegaConf.select(cfg, key, throw_on_missing=False)
        if OmegaConf.is_config(got):
            got = OmegaConf.to_container(got, resolve=True)
        assert got == expected, f"{name}: {key} is {got!r}, the experiment sets {expected!r}"
    for group, option in groups.items():
        own = OmegaConf.load(Path(CONFIG_DIR) / group / f"{option}.yaml")
        for key in ("_target_", "name", "task", "source"):
            if key in own:
                assert cfg[group][key] == own[key], f"{name}: {group}.{key} is not {option}'s"
    # the composition differs from the CLI's defaults where the experiment says so
    assert cfg.model._target_ != plain.model._target_ or cfg.data.name != plain.data.name


# -- end to end ------------------------------------------------------------------------------------
def _finite_metrics(part: dict[str, Any], where: str) -> None:
    assert part, f"{where}: no metrics"
    for key, value in part.items():
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}/{key}={value!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_end_to_end(name, data_root, tmp_path):
    out = tmp_path / "run"
    overrides = run_overrides(name, data_root)
    cfg = compose_config("train", overrides, out)
    # the run is the experiment: only the overridden data and trainer keys differ
    as_written = composed(name)
    for group in ("model", "optim", "eval", "callbacks"):
        assert cfg[group] == as_written[group], f"{name}: {group} differs from the experiment's"
    changed = {o.lstrip("+").split("=")[0].removeprefix("data.") for o in overrides}
    for key, value in as_written.data.items():
        if key not in changed:
            assert cfg.data[key] == value, f"{name}: data.{key} differs from the experiment's"
    metrics = train(cfg)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == cfg.model._target_
    assert saved["data"]["name"] == cfg.data.name
    _finite_metrics(saved["val"], f"{name} val")
    _finite_metrics(saved["test"], f"{name} test")
    assert saved["val"] == metrics["val"] and saved["test"] == metrics["test"]
    monitor = str(cfg.eval.monitor)
    if monitor.startswith("val/"):
        assert monitor.removeprefix("val/") in saved["val"], f"{name}: {monitor} not evaluated"
    for metric in cfg.eval.metrics:
        assert any(k.split("@")[0] == metric for k in saved["test"]), f"{name}: no test {metric}"
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert saved["data"]["n_train"] > 0 and saved["data"]["n_test"] > 0
    if cfg.data.split == "holdout_users" and cfg.data.get("fold_in_events") != 0:
        # strong generalization: the held-out users' fold-in histories reached the evaluation
        assert saved["data"]["n_val_input"] > 0 and saved["data"]["n_test_input"] > 0
    if cfg.data.get("fold_in_events") == 0:  # cold users: no history, attributes only
        assert saved["data"]["n_val_input"] == 0 and saved["data"]["n_test_input"] == 0
        assert saved["features"]["user"], f"{name}: no user attributes used"
