"""``recsys-eval``: re-evaluate a checkpoint on the test split of the run that produced it.

recsys-eval ckpt_path=<run_dir>/checkpoints/best.ckpt
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys.cli import CONFIG_DIR, report_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@report_errors
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: ``--help``, ``--cfg`` and Hydra's override errors answer
    # without loading torch and Lightning (~8 s of a CLI call's 9)
    from recsys.training.evaluate import evaluate_checkpoint
    from recsys.training.results import format_table

    out_dir = Path(cfg.paths.output_dir)
    metrics = evaluate_checkpoint(
        cfg.ckpt_path,
        out_dir,
        cfg.data_root,
        cfg.accelerator,
        cfg.batch_size,
        OmegaConf.to_container(cfg.groups, resolve=True) if cfg.get("groups") else None,
        trust=list(cfg.trust),
        allow_unfinished=bool(cfg.allow_unfinished),
    )
    print(f"\n{format_table({'val': metrics['val'], 'test': metrics['test']})}\n")
    for name, table in metrics.get("test_by_group", {}).items():
        print(f"test by {name}:\n{format_table(table)}\n")
    print(f"metrics written to {out_dir / 'metrics.json'}", flush=True)


if __name__ == "__main__":
    main()
