"""``recsys-compare``: which configuration won, and is the difference real?

recsys-compare multirun/<date>/<time> --metrics test/ndcg@10,test/recall@10 --baseline popularity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.errors import RecsysError
from recsys.training.compare import compare, default_out, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="recsys-compare",
        description="Compare runs: mean ± std over seeds, paired tests against a baseline, chart.",
    )
    parser.add_argument("paths", nargs="+", help="sweep directories and/or run directories")
    parser.add_argument(
        "--metrics",
        default="test/ndcg@10,test/recall@10",
        help="comma-separated metrics to tabulate (split/metric; default: %(default)s)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="primary metric: best row, tests, chart (default: the first of --metrics)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="row label (or a unique part of it) tested against (default: popularity, else the first row)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for compare.md/.csv/.png (default: the single sweep directory given, else .)",
    )
    parser.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="compare runs whose manifest.json does not say finished (interrupted, killed); "
        "by default they are refused",
    )
    args = parser.parse_args(argv)
    try:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        result = compare(args.paths, metrics, args.metric, args.baseline, args.allow_unfinished)
        out = Path(args.out) if args.out else default_out(args.paths)
        md, written = write_report(result, out)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(md)
    print(f"written: {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
