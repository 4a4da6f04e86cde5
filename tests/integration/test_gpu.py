"""The CUDA path: training and full-ranking evaluation on a GPU (bf16 mixed precision for
transformers) agree with the CPU evaluation of the same checkpoint. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys.training.runs import (
    datamodule_from_config,
    evaluate,
    load_checkpoint,
    module_from_checkpoint,
)
from recsys.training.train import train
from tests.conftest import TINY_DATA, compose_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"

CASES = [("mf", ["trainer.precision=32-true"])]
if (CONFIGS / "sasrec.yaml").is_file():
    CASES.append(("sasrec", ["trainer.precision=bf16-mixed"]))


@pytest.mark.parametrize(("model", "extra"), CASES, ids=[c[0] for c in CASES])
def test_cuda_training_and_evaluation_match_cpu(tmp_path, model, extra):
    overrides = TINY_DATA + [
        f"model={model}",
        "trainer=gpu",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=3",
        "~logger",
        *extra,
    ]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert all(0.0 <= v <= 1.0 for v in metrics["test"].values())
    assert metrics["test"]["ndcg@10"] > 0

    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    config = ckpt["hyper_parameters"]["config"]
    results = {}
    for accelerator in ("gpu", "cpu"):
        module = module_from_checkpoint(ckpt)
        dm = datamodule_from_config(config)
        dm.configure_for(module.model)
        results[accelerator], _ = evaluate(module, dm, "test", accelerator)
    # the same weights rank the same items on both devices (up to float ties)
    for k, v in results["cpu"].items():
        assert results["gpu"][k] == pytest.approx(v, abs=0.02), k
    assert results["gpu"] == pytest.approx(metrics["test"], abs=1e-6)

    if model == "mf":  # the bench's CUDA measurements run too
        from benchmarks.runner.matrix import measure_eval

        module = module_from_checkpoint(ckpt).cuda().eval()
        dm = datamodule_from_config(config)
        dm.configure_for(module.model)
        torch.cuda.reset_peak_memory_stats()
        out = measure_eval(module, dm, torch.device("cuda"))
        assert out["test_check"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
        assert torch.cuda.max_memory_allocated() > 0
