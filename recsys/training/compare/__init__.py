"""``recsys-compare``: which configuration won, and is the difference real?

    recsys-compare multirun/2026-11-24/12-00-00                 # every run of a sweep
    recsys-compare outputs/a outputs/b outputs/c --metric test/recall@20 --baseline popularity

Reads each run's ``metrics.json`` and ``per_user_test.npz``, groups the runs whose configs differ
only in ``seed``, and reports per group the mean ± std over seeds of the chosen metrics. For the
primary metric each group is compared with the baseline group over per-user values (each user's
value averaged over the group's seeds; users evaluated in both groups): a paired t-test and a
Wilcoxon signed-rank test, with Holm's step-down correction across the compared rows. Writes
``compare.md``, ``compare.csv`` and ``compare.png`` (primary metric per group with ± std error
bars). Runs whose data fingerprints differ are refused: their metrics are not comparable.
"""

from recsys.training.compare.render import plot, to_markdown, write_csv, write_report
from recsys.training.compare.runs import Group, Run, default_out, find_runs, group_runs
from recsys.training.compare.stats import compare, holm, paired_tests

__all__ = [
    "Group",
    "Run",
    "compare",
    "default_out",
    "find_runs",
    "group_runs",
    "holm",
    "paired_tests",
    "plot",
    "to_markdown",
    "write_csv",
    "write_report",
]
