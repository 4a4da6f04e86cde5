"""Shared fixtures: compose the real configs (as the CLI does) with tiny sizes and tmp outputs."""

from __future__ import annotations

import os
from pathlib import Path

# One OpenMP thread for the tests and the CLI subprocesses they start: tiny models gain nothing
# from two, and an oversubscribed CPU makes multi-threaded small ops many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from recsys.cli import CONFIG_DIR

torch.set_num_threads(1)  # small models: one thread is faster, and robust on a shared CPU

TINY_DATA = [
    "data.n_users=300",
    "data.n_items=120",
    "data.mean_length=25",
    "data.n_groups=4",
]
# a small synthetic log with item attributes (genre, brand) and a cold-item split: some
# catalogue items have no training event, only attributes (the export tests with features)
COLD_ITEM_FEATURE_DATA = [
    "data.n_users=80",
    "data.n_items=100",
    "data.mean_length=10",
    "data.n_groups=3",
    "data.split=cold_items",
    "data.cold_item_ratio=0.4",
    "data.cache=false",
    "++data.item_features=auto",
]

FAST_TRAINER = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=3",
    "logger=tensorboard",
]


def compose_config(
    config_name: str = "train", overrides: list[str] | None = None, output_dir: Path | None = None
) -> DictConfig:
    """The config the CLI would build for ``overrides``, with ``paths.output_dir`` set."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def feature_model(overrides: list[str], root: Path, seed: int = 0):
    """``(config, datamodule, split features, model)`` for train-config ``overrides``: the data
    prepared (seed 0), the model built with the split's feature schema (torch seed ``seed``) and
    its features set where it uses any."""
    from recsys.data.datamodule import RecDataModule
    from recsys.data.features import SplitFeatures
    from recsys.models.base import build_model

    config = OmegaConf.to_container(compose_config("train", overrides, root), resolve=True)
    dm = RecDataModule(config["data"], seed=0)
    dm.setup()
    features = SplitFeatures.of(dm.data)
    torch.manual_seed(seed)
    model = build_model(config["model"], dm.n_users, dm.n_items, feature_schema=features.schema())
    if model.uses_features and model.feats.active:
        model.set_features(features)
    return config, dm, features, model


@pytest.fixture
def tiny_overrides() -> list[str]:
    return TINY_DATA + FAST_TRAINER


def shared_datasets() -> Path | None:
    """The offline dataset copies (RECSYS_DATA_DIR or ../shared/datasets), if present."""
    env = os.environ.get("RECSYS_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    for c in candidates:
        if c.is_dir():
            return c
    return None
