"""Search spaces in Hydra's sweep grammar, as Optuna distributions, and sampled values back as
overrides.

    choice(32, 64, 128)            -> CategoricalDistribution  (lists and dicts kept as their text)
    range(1, 5)                    -> IntDistribution(1, 4)    (Python's range: stop excluded)
    interval(0.1, 0.5)             -> FloatDistribution(0.1, 0.5)
    tag(int, interval(10, 50))     -> IntDistribution(10, 50)
    tag(log, interval(1e-4, 1e-2)) -> FloatDistribution(1e-4, 1e-2, log=True)

Keys come from ``hydra.sweeper.params`` and from sweep overrides on the command line
(``model.embedding_size=32,64``); a command-line override wins over ``params`` for the same key,
and a plain value there fixes the key instead of searching it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Transformer,
)


class Dimension:
    """One searched key: ``name`` (the config key), ``key`` (as written in an override, with any
    ``+``/``++`` prefix or ``@package``) and its Optuna distribution.

    (A plain class: Hydra executes plugin modules outside ``sys.modules`` while scanning them,
    where ``@dataclass`` fails.)"""

    def __init__(self, name: str, key: str, distribution: Any) -> None:
        self.name, self.key, self.distribution = name, key, distribution

    def __repr__(self) -> str:
        return f"Dimension({self.name!r}, {self.key!r}, {self.distribution!r})"

    def override(self, value: Any) -> str:
        return f"{self.key}={value_text(value)}"


def value_text(value: Any) -> str:
    """A sampled value as the right-hand side of an override. Categorical choices that are not
    scalars are stored as their override text already (``[600,200]``), so ``str`` is exact."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def grammar(value: Any) -> str:
    """``value`` (nested dicts, lists, scalars) in Hydra's override grammar; strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{grammar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(grammar(v) for v in value) + "]"
    return QuotedString(text=str(value), quote=Quote.single).with_quotes()


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override (choice, range or interval)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator(Transformer.identity))
        if not values:
            raise ValueError(f"{override.input_line}: the range is empty")
        if value.shuffle:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(values[0], values[-1], step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if "int" in value.tags:  # Hydra's interval bounds are floats: ints are asked for
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{override.input_line}: not a search space (choice, range or interval)")


def search_space(
    params: Mapping[str, Any] | None,
    arguments: Iterable[str],
    config_loader: Any = None,
) -> tuple[list[Dimension], list[str]]:
    """The searched dimensions and the fixed overrides every trial gets."""
    parser = OverridesParser.create(config_loader=config_loader)
    merged: dict[str, Override] = {}
    for key, value in (params or {}).items():
        (ov,) = parser.parse_overrides([f"{key}={value}"])
        merged[ov.key_or_group] = ov
    for ov in parser.parse_overrides(list(arguments)):
        merged.pop(ov.key_or_group, None)  # the command line wins, and keeps its place
        merged[ov.key_or_group] = ov
    space: list[Dimension] = []
    fixed: list[str] = []
    for name, ov in merged.items():
        if ov.is_sweep_override():
            if ov.is_hydra_override():
                raise ValueError(f"{ov.input_line}: hydra.* keys cannot be searched")
            space.append(Dimension(name, ov.get_key_element(), distribution(ov)))
        else:
            fixed.append(ov.input_line or f"{ov.get_key_element()}={ov.get_value_string()}")
    return space, fixed
