"""Service metrics in the Prometheus text exposition format (version 0.0.4), without a dependency.

A :class:`Registry` holds counters, gauges and histograms and renders them all for a
``/metrics`` endpoint (serve it with :data:`CONTENT_TYPE`). We keep our own small registry rather
than ``prometheus_client`` so that each service instance (and each test) owns its metrics instead
of sharing a process-wide global registry.

Metrics are thread-safe: the service updates them from the event loop and from the scoring
thread. A metric without labels shows its sample (0) from the start; a labelled metric shows only
the label sets that have been used.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Histogram upper bounds in seconds: sub-millisecond scoring up to slow, multi-second calls."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The update methods take these as keyword arguments, so a label of that name could not be
# passed; "le" is the histogram's own bucket label.
_RESERVED_LABELS = frozenset({"amount", "value", "le"})


def _format_value(x: float) -> str:
    """A number as Prometheus parses it: ``repr`` of a float, or ``+Inf`` / ``-Inf`` / ``NaN``."""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(pairs: Sequence[tuple[str, str]]) -> str:
    """``{a="x",b="y"}``, or the empty string when there are no labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs) + "}"


class _Metric:
    """What the three kinds share: name, help, label names, a lock and the label-set check."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]):
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        labels = tuple(labels)
        for label in labels:
            if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label):
                raise ValueError(
                    f"{name}: invalid label name {label!r}: must match [a-zA-Z_][a-zA-Z0-9_]*"
                )
            if label.startswith("__"):
                raise ValueError(f"{name}: label names starting with '__' are reserved: {label!r}")
            if label in _RESERVED_LABELS:
                raise ValueError(f"{name}: label name {label!r} is reserved here")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{name}: duplicate label names in {list(labels)}")
        self.name = name
        self.help = str(help)
        self.labels = labels
        self._lock = threading.Lock()

    def _key(self, given: dict[str, object]) -> tuple[str, ...]:
        """The label values in declared order; missing or unexpected names are refused."""
        if given.keys() != set(self.labels):
            missing = [k for k in self.labels if k not in given]
            extra = sorted(k for k in given if k not in self.labels)
            parts = []
            if missing:
                parts.append(f"missing labels {missing}")
            if extra:
                parts.append(f"unexpected labels {extra}")
            raise ValueError(f"{self.name}: {'; '.join(parts)} (expected {list(self.labels)})")
        return tuple(str(given[k]) for k in self.labels)

    def bind(self, **labels: object) -> _Bound:
        """This metric with the label set fixed (checked once, here): ``.inc()`` / ``.set()`` /
        ``.observe()`` on the result skip the per-call label check, for hot paths. The label
        set's sample appears once first updated, as with the keyword form."""
        return _Bound(self, self._key(labels))

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        """This metric's exposition lines (``# HELP``, ``# TYPE``, then its samples)."""
        raise NotImplementedError


class _Scalar(_Metric):
    """One number per label set: the storage shared by counters and gauges."""

    def __init__(self, name: str, help: str, labels: Sequence[str]):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def _add_key(self, amount: float, key: tuple[str, ...]) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + float(amount)

    def render(self) -> list[str]:
        with self._lock:
            values = list(self._values.items())
        lines = self._header()
        for key, value in values:
            pairs = list(zip(self.labels, key, strict=True))
            lines.append(f"{self.name}{_label_text(pairs)} {_format_value(value)}")
        return lines


class Counter(_Scalar):
    """A value that only goes up (requests served, errors). Name it ``..._total``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (>= 0) to the sample of this label set."""
        self._inc_key(amount, self._key(labels))

    def _inc_key(self, amount: float, key: tuple[str, ...]) -> None:
        if not amount >= 0:  # also refuses NaN
            raise ValueError(f"{self.name}: a counter only goes up, got inc({amount!r})")
        self._add_key(amount, key)


class Gauge(_Scalar):
    """A value that goes up and down (requests in flight, queue length)."""

    kind = "gauge"

    def set(self, value: float, **labels: object) -> None:
        """Set the sample of this label set to ``value``."""
        self._set_key(value, self._key(labels))

    def _set_key(self, value: float, key: tuple[str, ...]) -> None:
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (may be negative) to the sample of this label set."""
        self._inc_key(amount, self._key(labels))

    def _inc_key(self, amount: float, key: tuple[str, ...]) -> None:
        self._add_key(amount, key)


class Histogram(_Metric):
    """Counts of observations (latencies, batch sizes) in cumulative ``le`` buckets."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help, labels)
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:  # +Inf is always added; accept it given
            bounds.pop()
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite numbers, got {list(buckets)}")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing, got {list(buckets)}")
        self.buckets = tuple(bounds)
        # Per label set: [count in each bucket (not cumulative) ..., count above the last], sum.
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        if not self.labels:
            self._data[()] = self._empty()

    def _empty(self) -> tuple[list[int], list[float]]:
        return [0] * (len(self.buckets) + 1), [0.0]

    def observe(self, value: float, **labels: object) -> None:
        """Record one observation in the buckets of this label set."""
        self._observe_key(value, self._key(labels))

    def _observe_key(self, value: float, key: tuple[str, ...]) -> None:
        value = float(value)
        # A value equal to a bound belongs to that bucket (le = "less or equal").
        index = len(self.buckets) if math.isnan(value) else bisect_left(self.buckets, value)
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                entry = self._data[key] = self._empty()
            counts, total = entry
            counts[index] += 1
            total[0] += value

    def render(self) -> list[str]:
        with self._lock:
            data = [(key, list(counts), total[0]) for key, (counts, total) in self._data.items()]
        lines = self._header()
        for key, counts, total in data:
            pairs = list(zip(self.labels, key, strict=True))
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                bucket = _label_text([*pairs, ("le", _format_value(bound))])
                lines.append(f"{self.name}_bucket{bucket} {_format_value(cumulative)}")
            lines.append(f"{self.name}_sum{_label_text(pairs)} {_format_value(total)}")
            lines.append(f"{self.name}_count{_label_text(pairs)} {_format_value(cumulative)}")
        return lines


class _Bound:
    """A metric with its label set fixed (:meth:`_Metric.bind`); only the update methods of
    its kind work (a counter's ``set`` raises AttributeError, as on the metric itself)."""

    __slots__ = ("_metric", "_key")

    def __init__(self, metric: _Metric, key: tuple[str, ...]):
        self._metric, self._key = metric, key

    def inc(self, amount: float = 1.0) -> None:
        self._metric._inc_key(amount, self._key)

    def set(self, value: float) -> None:
        self._metric._set_key(value, self._key)

    def observe(self, value: float) -> None:
        self._metric._observe_key(value, self._key)


class Registry:
    """The metrics of one service instance, rendered together in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _register(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """A new counter; ``name`` should end in ``_total`` (not added for you)."""
        metric = Counter(name, help, labels)
        self._register(metric)
        return metric

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        """A new gauge."""
        metric = Gauge(name, help, labels)
        self._register(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """A new histogram with the given upper bounds (``+Inf`` is added)."""
        metric = Histogram(name, help, labels, buckets)
        self._register(metric)
        return metric

    def render(self) -> str:
        """The whole exposition text, ending in a newline (empty if nothing is registered)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines = [line for metric in metrics for line in metric.render()]
        return "".join(line + "\n" for line in lines)
