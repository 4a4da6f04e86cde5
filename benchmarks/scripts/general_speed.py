"""Training-epoch and full-evaluation speed of a model under RecBole's ml-100k protocol, without
Lightning's per-epoch extras (validation, checkpoints): the loader, loss, backward and Adam step
per epoch, and one full-ranking pass over all validation users (score, mask, top-k, metrics).

    RECSYS_DATA_DIR=/path/to/datasets python benchmarks/scripts/general_speed.py experiment=bpr_ml100k
"""

from __future__ import annotations

import sys
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recsys.cli import CONFIG_DIR
from recsys.data.datamodule import RecDataModule
from recsys.training.module import RecModule


def main(overrides: list[str], epochs: int = 3) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dm = RecDataModule(data, seed=0, eval_batch_size=int(cfg.eval.batch_size))
    dm.setup()
    evaluation = {
        k: v for k, v in OmegaConf.to_container(cfg.eval).items() if k in ("topk", "metrics")
    }
    module = RecModule(
        OmegaConf.to_container(cfg.model, resolve=True),
        dm.n_users,
        dm.n_items,
        optim=OmegaConf.to_container(cfg.optim),
        evaluation=evaluation,
    )
    dm.configure_for(module.model)
    opt = module.configure_optimizers()
    loader = dm.train_dataloader()
    times = []
    for epoch in range(epochs + 1):  # epoch 0 warms up
        loader.sampler.set_epoch(epoch)
        module.model.train()
        t0 = time.perf_counter()
        for batch in loader:
            out = module.model.loss(batch)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    module.model.eval()
    evals = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.no_grad():
            module.evaluate(dm.val_dataloader())
        evals.append(time.perf_counter() - t0)
    epoch_s = sorted(times[1:])[len(times[1:]) // 2]
    eval_s = sorted(evals[1:])[len(evals[1:]) // 2]
    n = len(dm.data.train)
    print(
        f"{cfg.model._target_}: threads={torch.get_num_threads()} train pairs={n} "
        f"epoch={epoch_s:.3f}s ({n / epoch_s:,.0f} interactions/s) "
        f"eval pass={eval_s:.3f}s ({dm.n_users} users x {dm.n_items} items) [median]"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
