"""Resume is exact for MF with row-sparse gradients and row-wise Adagrad: its state (an
accumulator per row) is in the checkpoint, and an interrupted run resumed from
``last.ckpt`` ends bit for bit where an uninterrupted one does (as tests/integration/
test_resume_exact.py checks for the models with in-training randomness)."""

from __future__ import annotations

import pytest

from recsys.training.train import train
from tests.conftest import compose_config
from tests.integration.test_resume_exact import BASE, EPOCHS, STOP, _assert_same_tensors, _ckpt

OPTIMIZERS = {
    "row_adagrad": ["optim=row_adagrad", "optim.lr=0.05", "optim.compile=false"],
    # the shipped path: the model's step and the update compiled (recsys.compiling)
    "row_adagrad-compiled": ["optim=row_adagrad", "optim.lr=0.05", "optim.compile=true"],
}
PARAMS = [
    pytest.param(k, marks=[pytest.mark.slow] if k.endswith("compiled") else [])
    for k in sorted(OPTIMIZERS)
]


@pytest.mark.parametrize("optim", PARAMS)
def test_sparse_mf_resumes_exactly(optim, tmp_path):
    compiled = "model.compile=" + ("true" if optim.endswith("compiled") else "false")
    base = BASE + ["model=mf", "model.sparse=true", compiled, "optim.steps_per_call=3"]
    base += OPTIMIZERS[optim]
    full = train(
        compose_config("train", base + [f"trainer.max_epochs={EPOCHS}"], tmp_path / "full")
    )
    train(compose_config("train", base + [f"trainer.max_epochs={STOP}"], tmp_path / "part"))
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    stopped = _ckpt(last)
    if optim.startswith("row_adagrad"):  # the accumulators are saved, and mid-way
        state = stopped["optimizer_states"][0]["state"]
        assert len(state) == 2 and all(float(s["sum"].sum()) > 0 for s in state.values())
    resumed = train(
        compose_config(
            "train", base + [f"trainer.max_epochs={EPOCHS}", f"ckpt_path={last}"], tmp_path / "x"
        )
    )
    want = _ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt")
    got = _ckpt(last)
    assert got["global_step"] == want["global_step"]
    _assert_same_tensors(got["state_dict"], want["state_dict"], "state_dict")
    _assert_same_tensors(got["optimizer_states"], want["optimizer_states"], "optimizer_states")
    for split in ("val", "test"):
        assert resumed[split] == full[split], split
