"""The Optuna sweeper's search spaces: Hydra's sweep grammar to Optuna distributions, sampled
values back to overrides Hydra parses to the same value, and the pruning callback's override."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

optuna = pytest.importorskip("optuna", reason="needs the sweep extra: pip install -e '.[sweep]'")

from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hydra_plugins.recsys_optuna_sweeper.space import grammar, search_space  # noqa: E402

PARSER = OverridesParser.create()


def _parsed(override: str):
    (ov,) = PARSER.parse_overrides([override])
    return ov.value()


def test_grammar_to_distributions():
    space, fixed = search_space(
        {
            "model.embedding_size": "choice(32, 64, 128)",
            "model.hidden_dims": "choice([600,200], [200,100])",
            "model.n_layers": "range(1, 4)",
            "model.dropout": "interval(0.1, 0.5)",
            "model.max_len": "tag(int, interval(10, 50))",
            "model.n_items": "tag(int, log, interval(8, 64))",
            "optim.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.loss": "bpr",
        },
        [],
    )
    d = {dim.name: dim.distribution for dim in space}
    assert d["model.embedding_size"] == CategoricalDistribution([32, 64, 128])
    assert d["model.hidden_dims"] == CategoricalDistribution(["[600,200]", "[200,100]"])
    assert d["model.n_layers"] == IntDistribution(1, 3)  # Python's range: the stop is excluded
    assert d["model.dropout"] == FloatDistribution(0.1, 0.5)
    assert d["model.max_len"] == IntDistribution(10, 50)
    assert d["model.n_items"] == IntDistribution(8, 64, log=True)
    assert d["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert fixed == ["model.loss=bpr"]  # a plain value in params is fixed, not searched


def test_command_line_wins_over_params():
    space, fixed = search_space(
        {"optim.lr": "interval(1e-4, 1e-2)", "model.reg": "choice(0.0, 0.1)"},
        ["optim.lr=0.003", "seed=1,2", "+extra=5", "data.n_users=120"],
    )
    assert [d.name for d in space] == ["model.reg", "seed"]
    assert fixed == ["optim.lr=0.003", "+extra=5", "data.n_users=120"]


def test_sampled_values_round_trip_through_hydra():
    space, _ = search_space(
        {
            "a": "choice([600,200], [200,100])",
            "b": "tag(log, interval(1e-6, 1e-2))",
            "c": "choice(true, false)",
            "d": "choice(x, 'a b')",
        },
        [],
    )
    dims = {d.name: d for d in space}
    assert _parsed(dims["a"].override("[600,200]")) == [600, 200]
    assert _parsed(dims["b"].override(3.7e-05)) == 3.7e-05
    assert _parsed(dims["c"].override(False)) is False
    assert _parsed(dims["d"].override("'a b'")) == "a b"


def test_pruning_override_parses_to_the_same_node():
    node = {
        "_target_": "recsys.training.pruning.OptunaPruning",
        "storage": "sqlite:////tmp/a b/optuna.db",
        "study_name": "it's",
        "trial": 3,
        "monitor": "${eval.monitor}",
        "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 1},
    }
    assert _parsed(f"++callbacks.optuna_pruning={grammar(node)}") == node


def test_a_space_without_sweeps_is_refused():
    with pytest.raises(ValueError, match="not a search space"):
        from hydra_plugins.recsys_optuna_sweeper.space import distribution

        distribution(PARSER.parse_overrides(["a=1"])[0])


def test_recovery_reruns_an_enqueued_trial_killed_before_its_suggestions():
    """A kill between ``ask()`` and the suggestions leaves a running trial with no params: the
    rerun gets the params it was enqueued with, not a fresh sample."""
    from hydra_plugins.recsys_optuna_sweeper.sweeper import OptunaSweeper

    study = optuna.create_study()
    study.enqueue_trial({"optim.lr": 0.05, "model.embedding_size": -1})
    killed = study.ask()  # running, params not yet suggested
    assert killed.params == {}
    assert OptunaSweeper._recover(study) == [killed.number]
    (rerun,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert rerun.system_attrs["fixed_params"] == {"optim.lr": 0.05, "model.embedding_size": -1}
    assert rerun.user_attrs["rerun_of"] == killed.number
