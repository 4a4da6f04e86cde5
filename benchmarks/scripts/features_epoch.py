"""Training-step cost of a model with and without features, interleaved in one process.

Each configuration (a set of Hydra overrides) is prepared once (data, model, features in its
buffers, Adam), then the configurations take turns: ``--reps`` rounds, each timing the first
``--batches`` training batches of an epoch (the same batches in the same order for every
configuration: the loader is seeded). Prints CPU and wall seconds per batch and per trained
position, for each configuration and round, then the median per configuration.

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=<datasets> .venv/bin/python benchmarks/scripts/features_epoch.py \\
        --batches 60 --reps 3 -- experiment=sasrec_ce_beauty -- experiment=sasrec_features_beauty

Works on checkouts whose models have no features (the id-only configuration alone), so the
same script measures the id-only path before and after a change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def _compose(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(Path.cwd() / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "outputs/features_epoch"  # no Hydra run: nothing is written there
    return OmegaConf.to_container(cfg, resolve=True)


def _prepare(overrides: list[str]):
    from recsys.training.runs import datamodule_from_config, module_for

    config = _compose(overrides)
    dm = datamodule_from_config(config)
    dm.setup()
    module = module_for(config, dm)
    model = module.model
    opt = torch.optim.Adam(model.parameters(), lr=float(config["optim"].get("lr", 1e-3)))
    return config, dm, model, opt


def _time(dm, model, opt, batches: int, seed: int) -> tuple[float, float, int]:
    torch.manual_seed(seed)
    model.train()
    n_pos, p0, t0 = 0, time.process_time(), time.perf_counter()
    for k, b in enumerate(dm.train_dataloader()):
        if k >= batches:
            break
        loss = model.loss(b)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        n_pos += int((b.target != model.pad).sum()) if hasattr(b, "target") else len(b)
    return time.process_time() - p0, time.perf_counter() - t0, n_pos


def main() -> None:
    argv = sys.argv[1:]
    head, groups = (
        (argv[: argv.index("--")], argv[argv.index("--") :]) if "--" in argv else (argv, [])
    )
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--label", default="")
    args = p.parse_args(head)
    configs: list[list[str]] = []
    for tok in groups:
        if tok == "--":
            configs.append([])
        else:
            configs[-1].append(tok)
    torch.set_num_threads(1)
    prepared = [_prepare(o) for o in configs]
    results: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    for r in range(args.reps):
        for i, (_, dm, model, opt) in enumerate(prepared):
            cpu, wall, n_pos = _time(dm, model, opt, args.batches, seed=r)
            results[i].append(cpu / args.batches)
            print(
                f"{args.label} round={r} config={' '.join(configs[i])} cpu_s_per_batch={cpu / args.batches:.4f} "
                f"wall_s_per_batch={wall / args.batches:.4f} us_per_position={1e6 * cpu / max(n_pos, 1):.1f}",
                flush=True,
            )
    for i, o in enumerate(configs):
        print(
            f"{args.label} median config={' '.join(o)} cpu_s_per_batch={statistics.median(results[i]):.4f}"
        )


if __name__ == "__main__":
    main()
