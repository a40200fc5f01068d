"""The limiter: limit resolution, headers, and one behaviour suite run against gcra.lua on
the session's real Redis and against the in-process fallback (LocalGcra)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from crosslogic.errors import Invalid
from crosslogic.ratelimit.config import Identity, LimitRow, LimitTable, parse_limit
from crosslogic.ratelimit.gcra import (
    MAX_AHEAD_US,
    MAX_COST,
    Decision,
    Limit,
    LocalGcra,
    format_reset,
    interpret,
    limits_for,
    script_args,
)
from crosslogic.ratelimit.limiter import RateLimiter, RateLimitMetrics
from crosslogic.ratelimit.store import RedisCounters
from crosslogic.redis_pipe import read_script
from crosslogic.stack import Stack

WHO = Identity(tenant_id="t1", environment_id="e1", api_key_id="k1", plan="pro")


def test_resolution_prefers_the_subject_then_the_plan_then_defaults() -> None:
    table = LimitTable(
        [
            LimitRow("global", "", "global", requests_per_second=1000),
            LimitRow("plan", "pro", "tenant", tokens_per_minute=50_000),
            LimitRow("plan", "pro", "key", requests_per_minute=100),
            LimitRow(
                "environment", "e1", "environment", requests_per_minute=30, fail_mode="closed"
            ),
        ],
        default_key_rpm=600,
    )
    layers = {x.layer: x for x in table.resolve(WHO)}
    assert layers["global"].row.requests_per_second == 1000
    assert layers["tenant"].row.tokens_per_minute == 50_000
    assert layers["environment"].row.fail_mode == "closed"
    assert layers["key"].row.requests_per_minute == 100
    other_plan = table.resolve(Identity("t2", "e2", "k2", plan="free", key_rpm=7))
    assert [(x.layer, x.row.requests_per_minute) for x in other_plan] == [
        ("global", None),
        ("key", 7),
    ]  # the key's own rpm over DEFAULT_KEY_RPM


def test_limits_and_their_costs() -> None:
    table = LimitTable(
        [
            LimitRow(
                "key",
                "k1",
                "key",
                requests_per_minute=5,
                tokens_per_minute=100,
                tokens_per_day=1000,
            )
        ],
        default_key_rpm=600,
    )
    limits = limits_for(table.resolve(WHO), tokens=40)
    assert [(x.kind, x.period_s, x.limit, x.cost) for x in limits] == [
        ("requests", 60, 5, 1),
        ("tokens", 60, 100, 40),
        ("tokens", 86400, 1000, 40),
    ]
    keys, argv = script_args(limits)
    assert keys[0] == "crosslogic:rl:{t:t1}:key:k1:requests:60" and argv[:4] == [
        60_000_000,
        5,
        1,
        0,
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"scope": "tenant", "subject": "x", "requests_per_minute": -1}, "requests_per_minute"),
        ({"scope": "tenant", "subject": "x", "rpm": 5}, "rpm"),
        ({"scope": "tenant", "subject": "x"}, None),
        (
            {
                "scope": "tenant",
                "subject": "x",
                "requests_per_second": 10,
                "requests_per_minute": 5,
            },
            "requests_per_second",
        ),
        ({"scope": "key", "subject": "x", "layer": "tenant", "requests_per_minute": 5}, "layer"),
        ({"scope": "global", "subject": "x", "requests_per_minute": 5}, "subject"),
        (
            {
                "scope": "plan",
                "subject": "p",
                "layer": "key",
                "requests_per_minute": 5,
                "fail_mode": "maybe",
            },
            "fail_mode",
        ),
    ],
)
def test_operator_input_is_validated(body: dict[str, object], param: str | None) -> None:
    with pytest.raises(Invalid) as refused:
        parse_limit(body)
    assert refused.value.param == param


def test_reset_format() -> None:
    assert (format_reset(0.02), format_reset(1.2), format_reset(360)) == ("20ms", "2s", "6m0s")


Evaluate = Callable[[Sequence[Limit]], list[int]]


@pytest.fixture(params=["redis", "local"])
def evaluate(request: pytest.FixtureRequest) -> Evaluate:
    if request.param == "local":
        return LocalGcra().evaluate
    stack: Stack = request.getfixturevalue("stack")
    client = redis.Redis(host=stack.settings.redis_host, port=stack.settings.redis_port)
    request.addfinalizer(client.close)
    script = client.register_script(read_script("crosslogic.ratelimit", "gcra.lua"))

    def run(limits: Sequence[Limit]) -> list[int]:
        keys, argv = script_args(limits)
        return [int(x) for x in script(keys=keys, args=argv)]

    return run


def limit(kind: str, value: int, *, cost: int = 1, layer: str = "key") -> Limit:
    period = 60
    return Limit(
        layer=layer,
        kind=kind,
        redis_key=f"test:{uuid.uuid4()}:{kind}",
        limit=value,
        period_s=period,
        cost=cost,
    )


def decide(evaluate: Evaluate, limits: Sequence[Limit]) -> Decision:
    return interpret(limits, evaluate(limits))


def test_admits_exactly_the_limit_and_refuses_all_or_nothing(evaluate: Evaluate) -> None:
    tenant = limit("requests", 100, layer="tenant")
    key = limit("requests", 3)
    decisions = [decide(evaluate, [tenant, key]) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    refused = decisions[3]
    assert refused.refused_by == key and 0 < refused.retry_after_s <= 20
    assert refused.states[0].remaining == 97  # the tenant paid for the 3 admitted only
    assert dict(refused.headers())["x-ratelimit-remaining-requests"] == "0"
    assert refused.error().status == 429 and refused.error().param == "key"


def test_tokens_are_debited_while_any_remain(evaluate: Evaluate) -> None:
    budget = limit("tokens", 100, cost=70)
    first, second, third = (decide(evaluate, [budget]) for _ in range(3))
    assert first.allowed and second.allowed  # 30 left: admitted, and charged all 70
    assert not third.allowed  # in debt: refused until it is paid back
    assert third.refused_by == budget
    assert dict(second.headers())["x-ratelimit-remaining-tokens"] == "0"
    assert second.reservation() == {"tokens": 70, "counters": [[budget.redis_key, 600_000.0]]}


def test_settlement_refunds_an_overestimate(stack: Stack) -> None:
    client = redis.Redis(host=stack.settings.redis_host, port=stack.settings.redis_port)
    gcra = client.register_script(read_script("crosslogic.ratelimit", "gcra.lua"))
    settle = client.register_script(read_script("crosslogic.billing", "settle.lua"))
    budget = limit("tokens", 100, cost=90)
    keys, argv = script_args([budget])
    first = interpret([budget], gcra(keys=keys, args=argv))
    assert first.allowed and first.states[0].remaining == 10
    # the request really used 10 tokens: refund the other 80
    settle(keys=keys, args=[round(-80 * budget.interval_us)])
    again = interpret([budget], gcra(keys=keys, args=argv))
    assert again.allowed and again.states[0].remaining == 0  # 10 + 90 = 100
    assert not interpret([budget], gcra(keys=keys, args=argv)).allowed
    client.close()


@pytest.mark.parametrize("cost", [MAX_COST, 10**30])
def test_a_huge_cost_keeps_counters_exact_and_bounded(evaluate: Evaluate, cost: int) -> None:
    # a day's budget of 1 token: the worst interval; 10**30 is past any clamp upstream
    budget = Limit(
        layer="key",
        kind="tokens",
        redis_key=f"test:{uuid.uuid4()}:tokens",
        limit=1,
        period_s=86400,
        cost=cost,
    )
    first = decide(evaluate, [budget])
    assert first.allowed and first.states[0].remaining == 0
    assert 0 < first.states[0].reset_after_s * 1e6 <= MAX_AHEAD_US
    refused = decide(evaluate, [budget])
    assert not refused.allowed and 0 < refused.retry_after_s * 1e6 <= MAX_AHEAD_US


ROWS = st.lists(
    st.builds(
        LimitRow,
        scope=st.sampled_from(["plan", "tenant", "environment", "key"]),
        subject=st.sampled_from(["free", "t1", "e1", "k1"]),
        layer=st.sampled_from(["tenant", "environment", "key"]),
        requests_per_minute=st.none() | st.integers(1, 10**6),
        tokens_per_minute=st.none() | st.integers(1, 10**6),
        tokens_per_day=st.none() | st.integers(1, 10**9),
    ),
    max_size=6,
)
IDENTITIES = st.builds(
    Identity,
    tenant_id=st.sampled_from(["t1", "t2"]),
    environment_id=st.sampled_from(["e1", "e2"]),
    api_key_id=st.sampled_from(["k1", "k2"]),
    plan=st.sampled_from(["free", "pro"]),
    key_rpm=st.none() | st.integers(1, 1000),
)


@given(ROWS, ROWS, st.lists(st.tuples(IDENTITIES, st.integers(-5, 2**30)), max_size=8))
def test_resolved_limits_are_what_the_table_resolves(
    rows: list[LimitRow], later: list[LimitRow], asks: list[tuple[Identity, int]]
) -> None:
    """The limiter's per-identity cache answers what resolving anew would, before and after
    the table is replaced."""
    limiter = RateLimiter(
        counters=cast(RedisCounters, None),
        metrics=RateLimitMetrics(CollectorRegistry()),
        table=LimitTable(rows, default_key_rpm=600),
    )
    for table in (LimitTable(rows, default_key_rpm=600), LimitTable(later, default_key_rpm=60)):
        limiter.table = table
        for who, tokens in asks + asks:  # the second time from the cache
            assert limiter.limits(who, tokens=tokens) == limits_for(
                table.resolve(who), tokens=tokens
            )
