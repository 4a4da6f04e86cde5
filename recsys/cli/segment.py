"""``recsys-segment``: customer segments of a run or an artifact.

recsys-segment run=outputs/<date>/<time> features=both
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from recsys.cli import CONFIG_DIR, report_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="segment")
@report_errors
def main(cfg: DictConfig) -> None:
    # imported here, not at the top: ``--help``, ``--cfg`` and Hydra's override errors answer
    # without loading torch and Lightning (~8 s of a CLI call's 9)
    from recsys.customer.segments import segment

    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    result = segment(
        run=c.get("run"),
        artifact=c.get("artifact"),
        features=c["features"],
        k=c.get("k"),
        k_range=c.get("k_range"),
        seed=int(c["seed"]),
        n_init=int(c["n_init"]),
        silhouette_sample=int(c["silhouette_sample"]),
        out=c.get("out"),
        data_root=c.get("data_root"),
        plot=bool(c.get("plot", True)),
        trust=c.get("trust") or [],
        allow_unfinished=bool(c.get("allow_unfinished")),
    )
    print(f"{result['k']} segments of {result['n_users']} users ({result['features']} features)")
    for s in result["segments"]:
        ndcg = s.get("test", {}).get("ndcg@10")
        extra = f"  test ndcg@10 {ndcg:.4f}" if ndcg is not None else ""
        print(
            f"  segment {s['segment']}: {s['size']} users, median activity {s['activity'].get('q50', 0):.0f}{extra}"
        )
    print(f"wrote {', '.join(result['written'])}", flush=True)


if __name__ == "__main__":
    main()
