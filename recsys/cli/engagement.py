"""``recsys-engagement``: score every user's chance to come back within a horizon.

recsys-engagement data=ml-100k horizon_days=30
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recsys.cli import CONFIG_DIR, report_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="engagement")
@report_errors
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: ``--help``, ``--cfg`` and Hydra's override errors answer
    # without loading torch and Lightning (~8 s of a CLI call's 9)
    from recsys.customer.engagement import run

    run(cfg)


if __name__ == "__main__":
    main()
