"""Endpoint weights, pure: the health score, each strategy's weight, hysteresis and the
bounded rate at which weights change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crosslogic.contracts.routing import STRATEGIES
from crosslogic.xds import weights
from crosslogic.xds.weights import MAX_WEIGHT, MIN_WEIGHT, Load, settle

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
    running=st.integers(0, 100),
    jitter=st.lists(st.integers(-1, 1), min_size=1, max_size=50),
)
def test_a_stored_weight_moves_only_past_the_band(running: int, jitter: list[int]) -> None:
    stored = weights.Published()
    for delta in [0, *jitter]:
        load = Load(requests_running=max(0, running + delta), heartbeat_age=99.0)
        before = stored
        stored = weights.on_heartbeat(stored, load, heartbeat_timeout=TIMEOUT)
        computed = weights.load_weight(load)
        if abs(computed - before.load_weight) > max(1, 0.2 * before.load_weight):
            assert stored.load_weight == computed
        else:
            assert stored.load_weight == before.load_weight


def test_heartbeats_store_the_weights_each_strategy_publishes() -> None:
    busy = Load(requests_running=8, kv_cache_usage_perc=0.8, heartbeat_age=TIMEOUT)
    stored = weights.on_heartbeat(weights.Published(), busy, heartbeat_timeout=TIMEOUT)
    # least loaded: 1000 * (1 - 0.4) / 9; health: 1000 * (1 - 0.8 * 0.8), the heartbeat fresh
    assert stored == weights.Published(load_weight=67, health_weight=360)
    assert weights.endpoint_weight("least_loaded", stored) == 67
    assert weights.endpoint_weight("health_weighted", stored) == 360
    for strategy in ("round_robin", "random", "prefix_affinity"):
        assert weights.endpoint_weight(strategy, stored) == MIN_WEIGHT
    # a little less busy: inside the band, nothing moves (no push)
    calmer = Load(requests_running=7, kv_cache_usage_perc=0.75)
    assert weights.on_heartbeat(stored, calmer, heartbeat_timeout=TIMEOUT) == stored
