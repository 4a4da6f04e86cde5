"""``recsys-data``: dataset statistics, leakage audit, and cache preparation.

    recsys-data stats data=amazon-beauty data.root=../shared/datasets
    recsys-data prepare data=ml-1m

The first argument is the command; everything after it is a Hydra override, as in
``recsys-train``. User errors (missing files, malformed lines, ...) print one ``error:`` line and
exit with status 2.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from recsys.cli import CONFIG_DIR, EXIT_USER_ERROR, report_errors
from recsys.errors import ConfigError

COMMANDS = ("stats", "prepare")


def _fmt(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def format_stats(name: str, stats: dict[str, Any]) -> str:
    """The human-readable ``recsys-data stats`` report (integers printed plain)."""
    h = stats["history_length"]
    a = stats["audit"]
    sizes = ", ".join(f"{k} {v}" for k, v in stats["split_sizes"].items())
    lines = [
        f"dataset: {name}",
        f"users: {stats['users']}",
        f"items: {stats['items']}",
        f"interactions: {stats['interactions']}",
        f"density: {stats['density']:.6f} ({100 * stats['density']:.4f}%)",
        "history length: min {} | p25 {} | median {} | p75 {} | p90 {} | p99 {} | max {} | "
        "mean {:.2f}".format(
            *(_fmt(h[k]) for k in ("q0", "q25", "q50", "q75", "q90", "q99", "q100")), h["mean"]
        ),
        f"item popularity gini: {stats['item_gini']:.4f}",
        f"split ({stats['split']}): {sizes}",
        "audit:",
        "  pair overlap: train/val {train_val}, train/test {train_test}, val/test {val_test}".format(
            **a["pair_overlap"]
        ),
    ]
    if a.get("repeats_allowed"):
        lines.append(
            "  repeated pairs kept (data.dedup=false): identical events across parts: "
            "train/val {train_val}, train/test {train_test}, val/test {val_test}".format(
                **a["event_overlap"]
            )
        )
    t = a["temporal"]
    if t.get("applicable"):
        note = (
            "must be 0 for a global cutoff"
            if t["must_be_zero"]
            else "reported: cross-user, inherent to this protocol"
        )
        lines.append(
            f"  temporal: {t['train_after_first_test']} train and {t['val_after_first_test']} "
            f"validation interactions after the first test interaction ({note})"
        )
    else:
        lines.append("  temporal: not applicable (no timestamps or order)")
    lines += [
        f"  cold in test: {a['test_users_not_in_train']} users, {a['test_items_not_in_train']} "
        f"items absent from train (validation: {a['val_users_not_in_train']} users, "
        f"{a['val_items_not_in_train']} items)",
        f"  item vocabulary: {a['item_vocabulary']} ({a['items_outside_train']} items not in "
        f"train); popularity statistics: {a['popularity_statistics']}; preprocessing: "
        f"{a['preprocessing_scope']}",
    ]
    for entity, f in (a.get("features") or {}).items():
        fields = ", ".join(
            f"{name} {v['vocabulary']} values" if v["kind"] == "categorical" else f"{name} numeric"
            for name, v in f["fields"].items()
        )
        lines.append(
            f"  {entity} features ({', '.join(f['files'])}): {f['entities_with_row']} of "
            f"{f['entities']} {entity}s with a row ({f['rows_matching_no_entity']} rows match "
            f"none); {fields}; vocabularies from train only: {'yes' if f['ok'] else 'NO'}"
        )
    lines.append(f"  leak-free: {'yes' if a['ok'] else 'NO'}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Execute ``cfg.command`` on ``cfg.data``; returns the statistics (stats) or cache info."""
    from recsys.data.audit import describe
    from recsys.data.pipeline import cache_path, prepare

    command = str(cfg.command)
    if command not in COMMANDS:
        raise ConfigError(f"command must be one of {', '.join(COMMANDS)}, got {command!r}")
    try:
        data: dict[str, Any] = OmegaConf.to_container(  # type: ignore[assignment]
            cfg.data, resolve=True, throw_on_missing=True
        )
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:
        # e.g. data=csv without data.path, data=atomic without data.name
        missing = re.search(r"Missing mandatory value: ([\w.]+)", str(e))
        key = missing.group(1) if missing else str(e.full_key)
        key = key if key.startswith("data.") else f"data.{key}"
        raise ConfigError(f"{key} must be set for this dataset (add {key}=...)") from None
    seed = int(cfg.seed)
    t0 = time.perf_counter()
    split = prepare(data, seed)
    elapsed = time.perf_counter() - t0
    if command == "prepare":
        where = cache_path(data, seed)
        target = f"cached at {where[0]}" if where else "not cached (no raw files or cache disabled)"
        print(
            f"{data.get('name')}: {len(split.train)} train, {len(split.val)} val, "
            f"{len(split.test)} test interactions; {target} ({elapsed:.1f}s)",
            flush=True,
        )
        return {"cache": str(where[0]) if where else None}
    stats = describe(split)
    if cfg.get("json"):
        print(json.dumps({"dataset": data.get("name"), **stats}), flush=True)
    else:
        print(format_stats(str(data.get("name")), stats), flush=True)
    return stats


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="data_cli")
@report_errors
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


USAGE = "usage: recsys-data {stats,prepare} [data=<name>] [key=value ...]   (--help for more)"


def main() -> None:
    """Console script: take the command from the first argument, hand the rest to Hydra."""
    args = sys.argv[1:]
    if args and args[0] in COMMANDS:
        sys.argv = [sys.argv[0], f"command={args[0]}", *args[1:]]
    elif not args or not any(
        a.startswith(("--help", "-h", "--hydra-help", "--cfg", "--info"))
        or a.startswith("command=")
        for a in args
    ):
        print(USAGE, file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    _hydra_main()


if __name__ == "__main__":
    main()
