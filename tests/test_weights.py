"""Endpoint weights, pure: the health score, each strategy's weight, hysteresis and the
bounded rate at which weights change."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from crosslogic.contracts.routing import STRATEGIES
from crosslogic.xds import weights
from crosslogic.xds.weights import MAX_WEIGHT, MIN_WEIGHT, Load, WeightBook, settle

TIMEOUT = 10.0
loads = st.builds(
    Load,
    requests_running=st.integers(min_value=-5, max_value=100_000),
    requests_waiting=st.integers(min_value=-5, max_value=100_000),
    kv_cache_usage_perc=st.floats(allow_nan=True, allow_infinity=True),
    heartbeat_age=st.floats(allow_nan=True, allow_infinity=True),
)


@given(load=loads, strategy=st.sampled_from(STRATEGIES))
def test_every_weight_is_within_envoys_bounds(load: Load, strategy: str) -> None:
    weight = weights.weight(strategy, load, heartbeat_timeout=TIMEOUT)
    assert MIN_WEIGHT <= weight <= MAX_WEIGHT
    assert 0.0 <= weights.health_score(load, heartbeat_timeout=TIMEOUT) <= 1.0


def test_an_idle_fresh_node_is_fully_healthy_and_weighs_the_most() -> None:
    idle = Load()
    assert weights.health_score(idle, heartbeat_timeout=TIMEOUT) == 1.0
    assert weights.weight("least_loaded", idle, heartbeat_timeout=TIMEOUT) == MAX_WEIGHT
    assert weights.weight("health_weighted", idle, heartbeat_timeout=TIMEOUT) == MAX_WEIGHT


@given(
    running=st.integers(min_value=0, max_value=1000),
    waiting=st.integers(min_value=0, max_value=1000),
    more=st.integers(min_value=1, max_value=1000),
)
def test_more_load_never_weighs_more(running: int, waiting: int, more: int) -> None:
    base = weights.load_weight(Load(requests_running=running, requests_waiting=waiting))
    assert (
        weights.load_weight(Load(requests_running=running + more, requests_waiting=waiting)) <= base
    )
    assert (
        weights.load_weight(Load(requests_running=running, requests_waiting=waiting + more)) <= base
    )


def test_least_loaded_is_inverse_to_the_requests_a_node_holds() -> None:
    assert weights.load_weight(Load(requests_running=1)) == MAX_WEIGHT // 2
    assert weights.load_weight(Load(requests_running=9)) == MAX_WEIGHT // 10
    assert weights.load_weight(Load(requests_waiting=2)) == MAX_WEIGHT // 5  # queued: twice


@given(
    kv=st.floats(min_value=0, max_value=1),
    waiting=st.integers(min_value=0, max_value=100),
    age=st.floats(min_value=0, max_value=TIMEOUT),
)
def test_the_health_score_falls_with_memory_queue_and_a_late_heartbeat(
    kv: float, waiting: int, age: float
) -> None:
    score = weights.health_score(
        Load(kv_cache_usage_perc=kv, requests_waiting=waiting, heartbeat_age=age),
        heartbeat_timeout=TIMEOUT,
    )
    worse = weights.health_score(
        Load(kv_cache_usage_perc=kv, requests_waiting=waiting + 1, heartbeat_age=age),
        heartbeat_timeout=TIMEOUT,
    )
    assert worse <= score
    # running requests alone do not make a node less healthy (that is least_loaded's job)
    assert (
        weights.health_score(
            Load(
                kv_cache_usage_perc=kv,
                requests_waiting=waiting,
                heartbeat_age=age,
                requests_running=50,
            ),
            heartbeat_timeout=TIMEOUT,
        )
        == score
    )


def test_a_late_heartbeat_lowers_the_score_down_to_a_tenth() -> None:
    on_time = Load(heartbeat_age=TIMEOUT / 3)
    assert weights.health_score(on_time, heartbeat_timeout=TIMEOUT) == 1.0
    at_timeout = Load(heartbeat_age=TIMEOUT)
    assert abs(weights.health_score(at_timeout, heartbeat_timeout=TIMEOUT) - 0.1) < 1e-9


def test_equal_weight_strategies_ignore_load() -> None:
    busy = Load(requests_running=500, requests_waiting=50, kv_cache_usage_perc=1.0)
    for strategy in ("round_robin", "random", "prefix_affinity"):
        assert weights.weight(strategy, busy, heartbeat_timeout=TIMEOUT) == MIN_WEIGHT


@given(published=st.integers(1, MAX_WEIGHT), computed=st.integers(1, MAX_WEIGHT))
def test_settle_keeps_the_published_weight_inside_the_band(published: int, computed: int) -> None:
    result = settle(published, computed, hysteresis=0.2)
    assert result in (published, computed)
    if abs(computed - published) <= max(1, 0.2 * published):
        assert result == published
    else:
        assert result == computed


@given(
    start=st.integers(10, MAX_WEIGHT),
    jitter=st.lists(st.floats(min_value=-0.15, max_value=0.15), min_size=1, max_size=50),
)
def test_a_weight_hovering_within_the_band_never_changes(start: int, jitter: list[float]) -> None:
    book = WeightBook(interval=0.0, hysteresis=0.2)
    book.update({("n", "least_loaded"): start}, now=0.0)
    for i, delta in enumerate(jitter, start=1):
        hovering = max(1, round(start * (1 + delta)))
        assert book.update({("n", "least_loaded"): hovering}, now=float(i)) == {
            ("n", "least_loaded"): start
        }


def test_weights_change_at_most_once_per_interval_but_new_nodes_at_once() -> None:
    book = WeightBook(interval=1.0, hysteresis=0.2)
    a, b = ("a", "least_loaded"), ("b", "least_loaded")
    assert book.update({a: 1000}, now=0.0) == {a: 1000}
    assert book.update({a: 100}, now=0.1) == {a: 100}  # the first change goes at once
    assert book.update({a: 500}, now=0.5) == {a: 100}  # held: changed 0.4 s ago
    assert book.update({a: 500, b: 700}, now=0.6) == {a: 100, b: 700}  # a new node: at once
    assert book.update({a: 500, b: 700}, now=1.1) == {a: 500, b: 700}  # the interval passed
    assert book.update({b: 700}, now=1.2) == {b: 700}  # a left: forgotten
    assert book.update({a: 10, b: 700}, now=1.3) == {a: 10, b: 700}  # back: new again


@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.5), st.integers(1, MAX_WEIGHT)),
        min_size=1,
        max_size=60,
    )
)
def test_published_weights_change_no_more_often_than_the_interval(
    steps: list[tuple[float, int]],
) -> None:
    book = WeightBook(interval=1.0, hysteresis=0.2)
    key = ("n", "health_weighted")
    now, last, changes = 0.0, book.update({key: 500}, now=0.0)[key], []
    for gap, value in steps:
        now += gap
        published = book.update({key: value}, now=now)[key]
        if published != last:
            changes.append(now)
        last = published
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(changes))
