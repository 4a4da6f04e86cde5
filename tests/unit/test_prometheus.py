"""recsys.serving.prometheus: the exposition text against a hand-written expectation, escaping,
validation, thread safety, and an independent parse of everything it renders."""

from __future__ import annotations

import random
import re
import threading
from collections import defaultdict
from itertools import pairwise

import pytest

from recsys.serving.prometheus import CONTENT_TYPE, DEFAULT_BUCKETS, Registry


def small_registry() -> Registry:
    """A counter with labels, a gauge and a 3-bucket histogram, updated by hand.

    Observations are powers of two so that their sum is exact in floating point."""
    reg = Registry()
    requests = reg.counter("recsys_requests_total", "Requests served.", ["endpoint", "status"])
    in_flight = reg.gauge("recsys_in_flight", "Requests being handled.")
    seconds = reg.histogram("recsys_score_seconds", "Scoring time.", buckets=(0.25, 0.5, 1.0))
    requests.inc(endpoint="/recommend", status="200")
    requests.inc(2, endpoint="/recommend", status="200")
    requests.inc(endpoint="/similar", status=404)  # values are turned into strings
    in_flight.set(3)
    in_flight.inc(-1)
    for value in (0.125, 0.25, 0.5, 4.0):  # 0.25 sits on a bound: counted in le="0.25"
        seconds.observe(value)
    return reg


EXPECTED = """\
# HELP recsys_requests_total Requests served.
# TYPE recsys_requests_total counter
recsys_requests_total{endpoint="/recommend",status="200"} 3.0
recsys_requests_total{endpoint="/similar",status="404"} 1.0
# HELP recsys_in_flight Requests being handled.
# TYPE recsys_in_flight gauge
recsys_in_flight 2.0
# HELP recsys_score_seconds Scoring time.
# TYPE recsys_score_seconds histogram
recsys_score_seconds_bucket{le="0.25"} 2.0
recsys_score_seconds_bucket{le="0.5"} 3.0
recsys_score_seconds_bucket{le="1.0"} 3.0
recsys_score_seconds_bucket{le="+Inf"} 4.0
recsys_score_seconds_sum 4.875
recsys_score_seconds_count 4.0
"""


def test_small_registry_renders_the_hand_written_exposition():
    assert small_registry().render() == EXPECTED


def test_content_type_and_default_buckets():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert list(DEFAULT_BUCKETS) == sorted(DEFAULT_BUCKETS) and DEFAULT_BUCKETS[-1] == 2.5


def test_unlabelled_metrics_show_zero_and_labelled_ones_only_used_label_sets():
    reg = Registry()
    reg.counter("a_total", "A.")
    reg.gauge("b", "B.", ["kind"])
    h = reg.histogram("c_seconds", "C.", ["model"], buckets=(0.5,))
    reg.histogram("d_seconds", "D.", buckets=(0.5,))
    h.observe(0.75, model="ease")
    assert reg.render() == (
        "# HELP a_total A.\n# TYPE a_total counter\na_total 0.0\n"
        "# HELP b B.\n# TYPE b gauge\n"
        "# HELP c_seconds C.\n# TYPE c_seconds histogram\n"
        'c_seconds_bucket{model="ease",le="0.5"} 0.0\n'
        'c_seconds_bucket{model="ease",le="+Inf"} 1.0\n'
        'c_seconds_sum{model="ease"} 0.75\n'
        'c_seconds_count{model="ease"} 1.0\n'
        "# HELP d_seconds D.\n# TYPE d_seconds histogram\n"
        'd_seconds_bucket{le="0.5"} 0.0\nd_seconds_bucket{le="+Inf"} 0.0\n'
        "d_seconds_sum 0.0\nd_seconds_count 0.0\n"
    )


def test_an_empty_registry_renders_nothing():
    assert Registry().render() == ""


def test_label_values_and_help_are_escaped():
    reg = Registry()
    c = reg.counter("x_total", 'Back\\slash and\nnewline; "quotes" stay.', ["path"])
    c.inc(path='a"b\\c\nd')
    assert reg.render() == (
        '# HELP x_total Back\\\\slash and\\nnewline; "quotes" stay.\n'
        "# TYPE x_total counter\n"
        'x_total{path="a\\"b\\\\c\\nd"} 1.0\n'
    )


def test_special_numbers_print_as_prometheus_parses_them():
    reg = Registry()
    g = reg.gauge("g", "G.", ["k"])
    g.set(float("inf"), k="up")
    g.set(float("-inf"), k="down")
    g.set(float("nan"), k="nan")
    g.set(1e-05, k="small")
    assert reg.render().splitlines()[2:] == [
        'g{k="up"} +Inf',
        'g{k="down"} -Inf',
        'g{k="nan"} NaN',
        'g{k="small"} 1e-05',
    ]


@pytest.mark.parametrize("name", ["1abc", "a-b", "a b", "", "é"])
def test_bad_metric_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid metric name"):
        Registry().counter(name, "help")


@pytest.mark.parametrize("label", ["1a", "a-b", "a:b", "__reserved", "le", "amount", "value"])
def test_bad_or_reserved_label_names_are_refused(label):
    with pytest.raises(ValueError, match=re.escape(repr(label))):
        Registry().histogram("h", "help", [label])


def test_colons_are_allowed_in_metric_names():
    Registry().gauge("recsys:ratio", "help")


def test_duplicate_registrations_and_duplicate_labels_are_refused():
    reg = Registry()
    reg.counter("a_total", "A.")
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("a_total", "again")
    with pytest.raises(ValueError, match="duplicate label"):
        reg.gauge("b", "B.", ["x", "x"])


def test_missing_and_extra_label_names_are_named():
    reg = Registry()
    c = reg.counter("r_total", "R.", ["endpoint", "status"])
    with pytest.raises(ValueError, match=r"missing labels \['status'\]"):
        c.inc(endpoint="/x")
    with pytest.raises(ValueError, match=r"unexpected labels \['model'\]"):
        c.inc(endpoint="/x", status="200", model="m")
    with pytest.raises(ValueError, match=r"unexpected labels \['oops'\]"):
        reg.gauge("g", "G.").set(1, oops="x")
    with pytest.raises(ValueError, match=r"missing labels \['model'\]"):
        reg.histogram("h", "H.", ["model"]).observe(0.1)


def test_counters_only_go_up():
    c = Registry().counter("c_total", "C.")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1)
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(float("nan"))
    c.inc(0)


@pytest.mark.parametrize("buckets", [(), (0.5, 0.5), (1.0, 0.5), (0.1, float("nan"))])
def test_bad_buckets_are_refused(buckets):
    with pytest.raises(ValueError, match="buckets"):
        Registry().histogram("h", "H.", buckets=buckets)


def test_an_explicit_inf_bucket_is_not_doubled():
    reg = Registry()
    reg.histogram("h", "H.", buckets=(1.0, float("inf")))
    assert reg.render().count('le="+Inf"') == 1


def test_concurrent_updates_from_several_threads_sum_correctly():
    reg = Registry()
    c = reg.counter("c_total", "C.", ["worker"])
    g = reg.gauge("g", "G.")
    h = reg.histogram("h", "H.", buckets=(0.5,))
    n_threads, n = 8, 5000
    barrier = threading.Barrier(n_threads)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(n):
            c.inc(worker=str(i % 2))
            g.inc()
            h.observe(0.25)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = {(name, labels): value for name, labels, value in parse(reg.render())}
    half = float(n * n_threads // 2)
    assert samples[("c_total", (("worker", "0"),))] == half
    assert samples[("c_total", (("worker", "1"),))] == half
    assert samples[("g", ())] == n * n_threads
    assert samples[("h_count", ())] == n * n_threads
    assert samples[("h_bucket", (("le", "0.5"),))] == n * n_threads
    assert samples[("h_sum", ())] == 0.25 * n * n_threads


# An independent reading of the format: a sample line is a name, optional {labels}, one space
# and a value that Python's float() accepts (which covers +Inf, -Inf and NaN).
SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (?P<value>\S+)'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
COMMENT = re.compile(r"# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)")


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """(name, labels, value) of every sample; fails on any line that is not valid 0.0.4 text."""
    assert text.endswith("\n")
    samples = []
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            m = COMMENT.fullmatch(line)
            assert m, f"bad comment line: {line!r}"
            if m.group(1) == "TYPE":
                assert m.group(3) in ("counter", "gauge", "histogram"), line
                types[m.group(2)] = m.group(3)
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"bad sample line: {line!r}"
        name = m.group("name")
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", f"sample before TYPE: {line!r}"
        labels = tuple((k, unescape(v)) for k, v in LABEL.findall(m.group("labels") or ""))
        samples.append((name, labels, float(m.group("value"))))
    return samples


def test_every_rendered_line_parses_and_buckets_are_cumulative():
    reg = small_registry()
    h = reg.histogram("lat_seconds", 'Latency with "odd" labels.', ["model", "path"])
    rng = random.Random(0)
    for _ in range(500):
        model = rng.choice(["sasrec", 'we"ird', "back\\slash", "new\nline"])
        h.observe(rng.expovariate(20.0), model=model, path="/recommend")
    reg.gauge("temperature", "Can be anything.").set(float("-inf"))

    samples = parse(reg.render())
    buckets: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    counts = {}
    for name, labels, value in samples:
        rest = tuple(kv for kv in labels if kv[0] != "le")
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            buckets[(name[: -len("_bucket")], rest)].append((float(le), value))
        elif name.endswith("_count"):
            counts[(name[: -len("_count")], rest)] = value
    # Both histograms, the weird label values included, come back through the parser.
    models = {dict(rest)["model"] for (fam, rest) in buckets if fam == "lat_seconds"}
    assert models == {"sasrec", 'we"ird', "back\\slash", "new\nline"}
    assert ("recsys_score_seconds", ()) in buckets
    total = 0.0
    for key, rows in buckets.items():
        bounds = [le for le, _ in rows]
        values = [v for _, v in rows]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        assert all(a <= b for a, b in pairwise(values)), f"not cumulative: {key}"
        assert values[-1] == counts[key]
        if key[0] == "lat_seconds":
            total += values[-1]
    assert total == 500


def test_bound_label_sets_update_as_the_keyword_form_and_are_checked_once():
    reg = Registry()
    c = reg.counter("req_total", "R.", ["endpoint", "status"])
    g = reg.gauge("g", "G.", ["name"])
    h = reg.histogram("lat_seconds", "L.", ["endpoint"], buckets=(0.1, 1.0))
    bound = c.bind(endpoint="/a", status="200")
    assert "req_total{" not in reg.render()  # a bound label set shows once updated
    bound.inc()
    bound.inc(2)
    c.inc(endpoint="/a", status="200")
    g.bind(name="x").set(3)
    g.bind(name="x").inc(-1)
    timer = h.bind(endpoint="/a")
    timer.observe(0.05)
    timer.observe(0.5)
    h.observe(5.0, endpoint="/a")
    samples = {(name, labels): value for name, labels, value in parse(reg.render())}
    assert samples[("req_total", (("endpoint", "/a"), ("status", "200")))] == 4.0
    assert samples[("g", (("name", "x"),))] == 2.0
    a = (("endpoint", "/a"),)
    assert samples[("lat_seconds_bucket", (*a, ("le", "0.1")))] == 1
    assert samples[("lat_seconds_bucket", (*a, ("le", "1.0")))] == 2
    assert samples[("lat_seconds_count", a)] == 3 and samples[("lat_seconds_sum", a)] == 5.55
    with pytest.raises(ValueError, match="missing labels"):
        c.bind(endpoint="/a")
    with pytest.raises(ValueError, match="only goes up"):
        bound.inc(-1)
    with pytest.raises(AttributeError):
        bound.set(1)  # a counter has no set, bound or not
    with pytest.raises(AttributeError):
        timer.inc()
