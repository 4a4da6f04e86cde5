"""``python -m benchmarks.runner``: the benchmark matrix, the scale runs, re-rendering a report.

Run from the repository root (``benchmarks`` is not installed with the package):

    python -m benchmarks.runner            # matrices/full.yaml -> benchmarks/matrix.md, .json
    python -m benchmarks.runner --quick    # matrices/quick.yaml -> outputs/bench-quick/
    python -m benchmarks.runner --compare recbole --recbole-python .venv-recbole/bin/python
    python -m benchmarks.runner --matrix benchmarks/matrices/bpr_seeds.yaml --out <dir>
    python -m benchmarks.runner scale --sizes 1M,20M,100M   # -> outputs/bench/scale-<date_time>/
    python -m benchmarks.runner render <dir>/matrix.json    # rewrite <dir>/matrix.md from its JSON

The matrix is :mod:`benchmarks.runner.matrix`, the scale runs :mod:`benchmarks.runner.scale`, the
markdown :mod:`benchmarks.runner.render`, RecBole side by side :mod:`benchmarks.runner.recbole`.
``_entry`` and ``_scale`` are the child processes the runner starts, one per entry or size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_entry"]:  # child: one entry
        import torch

        from benchmarks.runner.matrix import run_entry

        spec = json.loads(Path(argv[1]).read_text())
        torch.set_num_threads(int(os.environ.get("RECSYS_BENCH_THREADS", torch.get_num_threads())))
        res = run_entry(spec)
        Path(spec["output_dir"], "bench_result.json").write_text(json.dumps(res, indent=2))
        return
    if argv[:1] == ["_scale"]:  # child: one scale point
        from benchmarks.runner.scale import run_scale_point

        spec = json.loads(Path(argv[1]).read_text())
        Path(spec["output_dir"], "scale_result.json").write_text(
            json.dumps(run_scale_point(spec), indent=2)
        )
        return
    if argv[:1] == ["render"]:  # re-render matrix.md from a matrix.json
        from benchmarks.runner.render import render_markdown

        path = Path(argv[1])
        path.with_suffix(".md").write_text(render_markdown(json.loads(path.read_text())))
        return
    if argv[:1] == ["scale"]:
        from benchmarks.runner.scale import scale_main

        scale_main(argv[1:])
        return
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.runner", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="benchmarks/matrices/quick.yaml")
    ap.add_argument("--matrix", help="a matrix YAML (default: benchmarks/matrices/full.yaml)")
    ap.add_argument(
        "--out",
        default=None,
        help="where matrix.md/.json go (default: benchmarks/; --quick: outputs/bench-quick/)",
    )
    ap.add_argument("--runs-dir", help="run directories (default: outputs/bench/<date_time>)")
    ap.add_argument("--only", help="comma-separated entry names")
    ap.add_argument("--compare", choices=["recbole"], help="also run RecBole on the same data")
    ap.add_argument("--recbole-python", default=None, help="python of the RecBole venv")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per entry")
    ap.add_argument("--peak-n", type=int, default=4096, help="matmul size for the fp32 peak")
    args = ap.parse_args(argv)

    from benchmarks.runner.matrix import run_matrix

    run_matrix(args)


if __name__ == "__main__":
    main()
