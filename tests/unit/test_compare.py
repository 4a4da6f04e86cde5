"""recsys-compare on hand-built run directories: grouping, mean ± std, paired tests, Holm, refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from recsys.cli.compare import main
from recsys.errors import CheckpointError, DataError
from recsys.training.compare import compare, holm


def make_run(
    root: Path,
    name: str,
    model: str,
    seed: int,
    per_user: np.ndarray,
    fingerprint: str = "fp1",
    split: str | None = None,
    status: str = "finished",
    users: np.ndarray | None = None,
    **model_kw,
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    config = {
        "seed": seed,
        "model": {"_target_": f"recsys.models.{model}", **model_kw},
        "data": {"name": "toy"},
        "paths": {"output_dir": str(d)},
    }
    users = np.arange(len(per_user)) if users is None else users
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "model": config["model"]["_target_"],
                "test": {
                    "ndcg@10": float(per_user.mean()),
                    "recall@10": float(per_user.mean()) / 2,
                },
                "val": {"ndcg@10": float(per_user.mean())},
                "data": {"fingerprint": fingerprint},
            }
        )
    )
    (d / "manifest.json").write_text(
        json.dumps({"config": config, "data": {"split_fingerprint": split}, "status": status})
    )
    np.savez_compressed(d / "per_user_test.npz", user=users, **{"ndcg@10": per_user})
    return d


def test_holm_matches_hand_worked_example():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, math.nan, 0.9]) == pytest.approx([1.0, math.nan, 1.0], nan_ok=True)
    assert holm([0.001]) == [0.001]


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 200)
    runs = {}
    for seed in (1, 2):
        # "good" beats "base" by a planted +0.1 per user; "same" equals "base" up to tiny noise
        runs[("pop", seed)] = make_run(tmp_path, f"pop{seed}", "popularity.Popularity", seed, base)
        runs[("good", seed)] = make_run(
            tmp_path,
            f"good{seed}",
            "mf.MF",
            seed,
            base + 0.1 + 0.01 * seed + rng.normal(0, 0.05, 200),
            embedding_size=64,
        )
        runs[("same", seed)] = make_run(
            tmp_path,
            f"same{seed}",
            "mf.MF",
            seed,
            base + rng.normal(0, 0.05, 200),
            embedding_size=8,
        )
    return tmp_path, runs


def test_groups_seeds_means_and_paired_tests(sweep):
    root, runs = sweep
    result = compare([str(root)], ["test/ndcg@10", "test/recall@10"])
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"popularity", "mf embedding_size=64", "mf embedding_size=8"}
    assert result["baseline"] == "popularity"
    good = rows["mf embedding_size=64"]
    assert good["n_seeds"] == 2 and good["best"] and not rows["popularity"]["best"]
    # mean ± std over the two seeds, from the metrics.json values
    vals = [
        json.loads((runs[("good", s)] / "metrics.json").read_text())["test"]["ndcg@10"]
        for s in (1, 2)
    ]
    assert good["test/ndcg@10"] == pytest.approx((np.mean(vals), np.std(vals, ddof=1)))
    # paired tests over per-user values averaged over seeds, against scipy on the same vectors
    per = {k: np.load(v / "per_user_test.npz")["ndcg@10"] for k, v in runs.items()}
    g = (per[("good", 1)] + per[("good", 2)]) / 2
    s = (per[("same", 1)] + per[("same", 2)]) / 2
    b = per[("pop", 1)]
    p_t = [stats.ttest_rel(g, b).pvalue, stats.ttest_rel(s, b).pvalue]
    p_w = [stats.wilcoxon(g, b).pvalue, stats.wilcoxon(s, b).pvalue]
    assert good["p_ttest"] == pytest.approx(p_t[0]) and good["p_wilcoxon"] == pytest.approx(p_w[0])
    assert good["p_ttest_holm"] == pytest.approx(holm(p_t)[0])
    assert good["p_ttest_holm"] < 1e-6  # the planted improvement is detected
    assert rows["mf embedding_size=8"]["p_ttest_holm"] > 0.01  # noise alone is not
    assert math.isnan(rows["popularity"]["p_ttest"])


def test_seeded_splits_pair_users_within_each_seed(tmp_path):
    """Held-out users (or cold items) differ from seed to seed: runs pair user by user within a
    seed, over every (seed, user), instead of averaging users no two seeds share."""
    rng = np.random.default_rng(1)
    vectors = {}
    for seed, users in ((1, np.arange(0, 80)), (2, np.arange(80, 160))):
        base = rng.uniform(0, 0.5, len(users))
        good = base + 0.02 + rng.normal(0, 0.05, len(users))
        make_run(tmp_path, f"pop{seed}", "popularity.Popularity", seed, base, users=users)
        make_run(tmp_path, f"mf{seed}", "mf.MF", seed, good, users=users)
        vectors[seed] = (good, base)
    rows = {r["label"]: r for r in compare([str(tmp_path)], ["test/ndcg@10"])["rows"]}
    g = np.concatenate([vectors[1][0], vectors[2][0]])
    b = np.concatenate([vectors[1][1], vectors[2][1]])
    assert rows["mf"]["n_users"] == 160
    assert rows["mf"]["p_ttest"] == pytest.approx(stats.ttest_rel(g, b).pvalue)
    assert rows["mf"]["p_wilcoxon"] == pytest.approx(stats.wilcoxon(g, b).pvalue)


def test_cli_writes_markdown_csv_and_chart(sweep, tmp_path, capsys):
    root, _ = sweep
    out = tmp_path / "report"
    main([str(root), "--out", str(out), "--baseline", "embedding_size=8"])
    md = (out / "compare.md").read_text()
    assert "★" in md and "(baseline)" in md and "± " in md
    best_line = next(line for line in md.splitlines() if line.startswith("| ★"))
    assert "embedding_size=64" in best_line
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "p_wilcoxon_holm" in csv_lines[0]
    import matplotlib.image

    img = matplotlib.image.imread(out / "compare.png")
    assert img.ndim == 3 and img.shape[0] > 100
    assert md in capsys.readouterr().out


def test_refuses_runs_on_different_data(tmp_path):
    make_run(tmp_path, "a", "mf.MF", 1, np.full(10, 0.2), fingerprint="aaa")
    make_run(tmp_path, "b", "mf.MF", 2, np.full(10, 0.3), fingerprint="bbb")
    with pytest.raises(DataError, match="fingerprints differ") as e:
        compare([str(tmp_path / "a"), str(tmp_path / "b")], ["test/ndcg@10"])
    assert "aaa" in str(e.value) and "bbb" in str(e.value)
    with pytest.raises(SystemExit) as code:
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")])
    assert code.value.code == 2


def test_unknown_metric_and_baseline_are_clear_errors(sweep):
    root, _ = sweep
    with pytest.raises(DataError, match="no run's metrics.json"):
        compare([str(root)], ["test/nope@3"])
    with pytest.raises(Exception, match="matches no row"):
        compare([str(root)], ["test/ndcg@10"], baseline="xyz")


def test_refuses_same_config_on_different_prepared_data(tmp_path):
    make_run(tmp_path, "a", "mf.MF", 1, np.full(10, 0.2), split="s1")
    make_run(tmp_path, "b", "popularity.Popularity", 1, np.full(10, 0.3), split="s2")
    make_run(
        tmp_path, "c", "popularity.Popularity", 2, np.full(10, 0.3), split="s3"
    )  # other seed: fine
    with pytest.raises(DataError, match="split fingerprints differ"):
        compare([str(tmp_path)], ["test/ndcg@10"])
    assert len(compare([str(tmp_path / "a"), str(tmp_path / "c")], ["test/ndcg@10"])["rows"]) == 2


def test_refuses_unfinished_runs_unless_allowed(tmp_path, capsys):
    """A run whose manifest does not say finished is refused by name (a sweep's killed or
    interrupted run too); --allow-unfinished compares those that have a metrics.json and skips
    the others, each with a note. A sweep's failed run is skipped with a note."""
    for seed in (1, 2):
        make_run(tmp_path, f"pop{seed}", "popularity.Popularity", seed, np.full(10, 0.2))
        make_run(tmp_path, f"mf{seed}", "mf.MF", seed, np.full(10, 0.3))
    make_run(tmp_path, "mf3", "mf.MF", 3, np.full(10, 0.3), status="interrupted")
    with pytest.raises(CheckpointError, match=r"mf3: run is interrupted") as e:
        compare([str(tmp_path)], ["test/ndcg@10"])
    assert "--allow-unfinished" in str(e.value)
    with pytest.raises(CheckpointError, match=r"mf3: run is interrupted"):
        compare([str(tmp_path / "mf1"), str(tmp_path / "mf3")], ["test/ndcg@10"])
    with pytest.raises(SystemExit) as code:
        main([str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o" / "compare.md").exists()

    allowed = compare([str(tmp_path)], ["test/ndcg@10"], allow_unfinished=True)
    rows = {r["label"]: r["n_seeds"] for r in allowed["rows"]}
    assert rows == {"mf": 3, "popularity": 2}
    assert any("interrupted run included" in n and "mf3" in n for n in allowed["notes"])

    # killed before its metrics.json: allowed, it is skipped with a note; a failed run is skipped
    (tmp_path / "mf3" / "metrics.json").unlink()
    failed = make_run(tmp_path, "mf4", "mf.MF", 4, np.full(10, 0.3), status="failed")
    (failed / "metrics.json").unlink()
    allowed = compare([str(tmp_path)], ["test/ndcg@10"], allow_unfinished=True)
    assert {r["label"]: r["n_seeds"] for r in allowed["rows"]} == {"mf": 2, "popularity": 2}
    assert any("skipped" in n and "mf3" in n for n in allowed["notes"])
    assert any(n.startswith("failed run skipped") and "mf4" in n for n in allowed["notes"])
