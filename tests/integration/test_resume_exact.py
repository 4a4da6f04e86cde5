"""Resume is exact for models with in-training randomness and state beyond the weights.

An uninterrupted run of ``EPOCHS`` epochs and a run stopped after ``STOP`` epochs, then resumed
from its ``last.ckpt`` (``ckpt_path=...``) to ``EPOCHS``, must end bit for bit the same: every
tensor of the final checkpoint's ``state_dict`` (``torch.equal``), the optimizer state, and the
val/test numbers of ``metrics.json``. SASRec exercises dropout (its masks must be drawn from the
same random stream after a resume); Mult-VAE exercises dropout, the reparameterisation noise and
the KL annealing counter (``anneal_step``, a buffer that must come back from the checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys.training.train import train
from tests.conftest import TINY_DATA, compose_config

EPOCHS, STOP = 4, 2
BASE = TINY_DATA + [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=tensorboard",
    "callbacks.early_stopping=null",  # both runs must train every epoch
    "data.batch_size=64",  # several updates per epoch
    "eval.baseline=null",
    "seed=7",
]
MODELS = {
    "sasrec": [
        "model=sasrec",
        "model.hidden_size=16",
        "model.n_layers=1",
        "model.inner_size=32",
        "model.max_len=10",
        "model.dropout=0.3",
        "model.attn_dropout=0.3",
        "optim.lr=0.01",
    ],
    "multvae": [
        "model=multvae",
        "model.hidden_dims=[32,8]",
        "model.dropout=0.3",
        "model.anneal_cap=0.5",
        # beta still rises when the runs end: a resume that restarted the count would differ
        "model.total_anneal_steps=100",
        "optim.lr=0.01",
    ],
}


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(got, want, where: str) -> None:
    """Nested dicts/lists of tensors and numbers: same structure, tensors ``torch.equal``."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), f"{where}: differs after resume"
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_same_tensors(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_tensors(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("name", sorted(MODELS))
def test_resume_is_exact(name, tmp_path):
    base = BASE + MODELS[name]
    full = train(
        compose_config("train", base + [f"trainer.max_epochs={EPOCHS}"], tmp_path / "full")
    )
    train(compose_config("train", base + [f"trainer.max_epochs={STOP}"], tmp_path / "part"))
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    stopped = _ckpt(last)
    assert stopped["epoch"] == STOP - 1
    if name == "multvae":  # the annealing counter is in the checkpoint, mid-way
        steps = int(stopped["state_dict"]["model.anneal_step"])
        assert steps == stopped["global_step"] > 0
        assert steps / 100 < 0.5  # beta has not reached its cap when the run stops
    resumed = train(
        compose_config(
            "train", base + [f"trainer.max_epochs={EPOCHS}", f"ckpt_path={last}"], tmp_path / "x"
        )
    )
    assert resumed["timing"]["epochs"] == EPOCHS - STOP
    # the resumed run continues in the interrupted run's directory
    assert not (tmp_path / "x").exists()

    want = _ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt")
    got = _ckpt(last)
    assert got["epoch"] == want["epoch"] == EPOCHS - 1
    assert got["global_step"] == want["global_step"]
    assert list(got["state_dict"]) == list(want["state_dict"])
    for key, tensor in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], tensor), f"{name}: {key} differs after resume"
    # the weights moved since the stop: the comparison is not of the resumed checkpoint itself
    assert any(not torch.equal(stopped["state_dict"][k], t) for k, t in want["state_dict"].items())
    _assert_same_tensors(got["optimizer_states"], want["optimizer_states"], "optimizer_states")

    saved = json.loads((tmp_path / "part" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert resumed[split] == full[split], split
        assert saved[split] == full[split], split
