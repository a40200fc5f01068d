"""The limiter's pure parts, and gcra.lua against the session's real Redis."""

from __future__ import annotations

import redis

from crosslogic.ratelimit.limiter import (
    Descriptor,
    format_reset,
    interpret,
    limits_for,
    script_args,
)
from crosslogic.ratelimit.store import load_script
from crosslogic.stack import Stack


def test_limits_from_descriptors() -> None:
    descriptors = [
        Descriptor(entries=(("key", "abc"),), requests_per_unit=5, unit=2, hits_addend=None),
        Descriptor(entries=(("other", "x"),), requests_per_unit=None, unit=None, hits_addend=None),
        Descriptor(entries=(("tenant", "t"),), requests_per_unit=None, unit=None, hits_addend=0),
    ]
    limits = limits_for(descriptors, default_rpm=100, request_hits=0)
    assert [(x.layer, x.limit, x.period_s, x.cost) for x in limits] == [
        ("key", 5, 60, 1),
        ("tenant", 100, 60, 0),
    ]


def test_reset_format() -> None:
    assert format_reset(0.02) == "20ms"
    assert format_reset(1.2) == "2s"
    assert format_reset(360) == "6m0s"


def gcra(
    client: redis.Redis,
    limits: list,
) -> object:  # type: ignore[type-arg]
    keys, argv = script_args(limits)
    reply = client.eval(load_script("gcra.lua"), len(keys), *keys, *argv)
    return interpret(limits, reply)


def test_gcra_admits_exactly_the_limit_and_refuses_all_or_nothing(stack: Stack) -> None:
    client = redis.Redis(host=stack.settings.redis_host, port=stack.settings.redis_port)
    client.delete("crosslogic:rl:key:t1:req:60", "crosslogic:rl:tenant:t1:req:60")
    descriptors = [
        Descriptor(entries=(("tenant", "t1"),), requests_per_unit=100, unit=2, hits_addend=None),
        Descriptor(entries=(("key", "t1"),), requests_per_unit=3, unit=2, hits_addend=None),
    ]
    limits = limits_for(descriptors, default_rpm=10, request_hits=1)
    decisions = [gcra(client, limits) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]  # type: ignore[attr-defined]
    refused = decisions[3]
    assert refused.refused_by.layer == "key"  # type: ignore[attr-defined]
    assert 0 < refused.retry_after_s <= 20  # type: ignore[attr-defined]
    # the tenant layer was charged for the 3 admitted requests only
    tenant_state = refused.states[0]  # type: ignore[attr-defined]
    assert tenant_state.remaining == 97
    # keys expire: memory stays bounded
    assert 0 < client.pttl("crosslogic:rl:key:t1:req:60") <= 60_000
    client.close()
