"""Request-path metrics tallied in process (crosslogic/metrics.py) expose exactly what
prometheus_client's own inc/observe would have, once flushed."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.metrics import FLUSH_EVERY_S, Tally, Timings

BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=50))
def test_timings_add_what_observe_adds(values: list[float]) -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("h_seconds", "h", buckets=BUCKETS, registry=direct)
    timings = Timings(Histogram("h_seconds", "h", buckets=BUCKETS, registry=batched))

    async def go() -> None:  # in an event loop, as in a service: tallied until flushed
        for value in values:
            histogram.observe(value)
            timings.observe(value)
        timings.flush()

    asyncio.run(go())
    expected, got = samples(direct), samples(batched)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(got[name] - value) < 1e-9, name


@given(st.lists(st.sampled_from(["allowed", "rate_limited", "unknown_key"]), max_size=50))
def test_tally_adds_what_inc_adds(outcomes: list[str]) -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    counter = Counter("d_total", "d", ["outcome"], registry=direct)
    tally = Tally(Counter("d_total", "d", ["outcome"], registry=batched))

    async def go() -> None:
        for outcome in outcomes:
            counter.labels(outcome).inc()
            tally.inc(outcome)
        tally.flush()

    asyncio.run(go())
    assert samples(batched) == samples(direct)


def test_inside_an_event_loop_counts_arrive_within_the_flush_period() -> None:
    registry = CollectorRegistry()
    tally = Tally(Counter("e_total", "e", ["outcome"], registry=registry))

    async def go() -> tuple[float, float]:
        for _ in range(3):
            tally.inc("allowed")
        at_once = samples(registry).get(("e_total", ("allowed",)), 0.0)
        await asyncio.sleep(2 * FLUSH_EVERY_S)
        return at_once, samples(registry)[("e_total", ("allowed",))]

    assert asyncio.run(go()) == (0.0, 3.0)
