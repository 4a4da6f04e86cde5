"""``recsys-train``: train one model on one dataset, evaluate it, leave a complete run directory.

    recsys-train model=mf data=synthetic data.n_users=5000 trainer.max_epochs=20 seed=7

The work is :func:`recsys.training.train.train`; this module only turns the command line into a
config (Hydra) and a user error into one line and exit status 2.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recsys.cli import CONFIG_DIR, report_errors
from recsys.training.sweep import record_failures


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@report_errors
@record_failures  # in a sweep (-m): a failing run is recorded, the others go on
def main(cfg: DictConfig) -> float | None:
    # imported here, not at the top: ``--help``, ``--cfg`` and Hydra's override errors answer
    # without loading torch and Lightning (~8 s of a CLI call's 9)
    from recsys.training.train import train

    metrics = train(cfg)
    monitor = str(cfg.get("optimized_metric") or cfg.eval.monitor).split("/", 1)
    return metrics.get(monitor[0], {}).get(monitor[-1]) if len(monitor) == 2 else None


if __name__ == "__main__":
    main()
