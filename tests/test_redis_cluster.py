"""The Redis Cluster client and the limiter over a real cluster of three masters: slots,
routing, redirections after a slot moves, a master failed over; limits exact per tenant slot
and the global layer shared by two limiters through leases."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from crosslogic.billing.accesslog import Settlement
from crosslogic.billing.settlement import TokenSettler
from crosslogic.errors import Unavailable
from crosslogic.plan import plan
from crosslogic.ratelimit.config import Identity, LimitRow, LimitTable
from crosslogic.ratelimit.limiter import RateLimiter, RateLimitMetrics
from crosslogic.ratelimit.store import RedisCounters
from crosslogic.redis_client import RedisClient, cluster_seeds, open_redis
from crosslogic.redis_cluster import ClusterRedis, CrossSlot, command_slot, crc16, key_slot
from crosslogic.redis_pipe import PipelinedRedis
from crosslogic.settings import load, to_env
from tests.support.redis_servers import Cluster, running_cluster, running_redis
from tests.support.waiting import wait_until

T = TypeVar("T")


def test_slots_of_known_keys() -> None:
    assert crc16(b"123456789") == 0x31C3  # the XMODEM check value
    assert key_slot("foo") == 12182
    # values from CLUSTER KEYSLOT of redis-server 6.2
    assert key_slot("{user1000}.following") == key_slot("user1000") == 3443
    assert key_slot("foo{}{bar}") == 8363
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: whole key
    assert key_slot("{t:a}:tenant:a:requests:60") == key_slot("{t:a}:key:k9:tokens:86400")
    assert command_slot(("HSET", "foo", "f", "v")) == 12182
    assert command_slot(("EVALSHA", "sha", 2, "{x}1", "{x}2", 5)) == key_slot("x")
    assert command_slot(("PING",)) is None
    with pytest.raises(CrossSlot):
        command_slot(("EVALSHA", "sha", 2, "a", "b"))


def test_redis_cluster_selects_the_cluster_client_and_no_embedded_redis() -> None:
    single = load({})
    assert isinstance(open_redis(single, timeout=0.1), PipelinedRedis)
    assert plan(single).embedded_redis
    chosen = load({"REDIS_CLUSTER": "10.0.0.1:7000,redis-b:7001"})
    assert load(to_env(chosen)) == chosen
    assert cluster_seeds(chosen.redis_cluster) == [("10.0.0.1", 7000), ("redis-b", 7001)]
    assert isinstance(open_redis(chosen, timeout=0.1), ClusterRedis)
    assert not plan(chosen).embedded_redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(replicas=0) as running:
        yield running


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def cluster_client(cluster: Cluster, *, timeout: float = 1.0) -> ClusterRedis:
    return ClusterRedis(cluster_seeds(cluster.seeds), timeout=timeout)


def test_commands_and_scripts_go_to_their_slot_master(cluster: Cluster) -> None:
    async def scenario() -> None:
        client = cluster_client(cluster)
        try:
            keys = [f"route:{uuid.uuid4()}" for _ in range(30)]  # spread over the masters
            await asyncio.gather(*(client.call("SET", k, k) for k in keys))
            assert await asyncio.gather(*(client.call("GET", k) for k in keys)) == [
                k.encode() for k in keys
            ]
            script = "return {redis.call('INCRBY', KEYS[1], ARGV[1]), #KEYS}"
            tagged = ["{t:1}:a", "{t:1}:b"]
            assert await client.eval_script(script, tagged, [5]) == [5, 2]
            with pytest.raises(CrossSlot):
                await client.eval_script(script, ["a", "b"], [1])
            await client.load_script(script)  # every master knows it
            assert len(client.masters()) == 3
            sha = hashlib.sha1(script.encode()).hexdigest()
            for _, port in client.masters():
                with contextlib.closing(cluster.client(port)) as node:
                    assert node.script_exists(sha) == [True]
            replies: list[object] = []
            await client.send_unconfirmed("SET", "route:unconfirmed", "1", on_reply=replies.append)
            assert await client.call("GET", "route:unconfirmed") == b"1" and replies == [b"OK"]
        finally:
            client.close()

    run(scenario())


def migrate(cluster: Cluster, key: str) -> tuple[int, int]:
    """Move ``key``'s slot (and the key) to another master, as redis-cli --cluster reshard
    does: IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE everywhere. (source, target)."""
    slot = key_slot(key)
    source = cluster.master_of(slot)
    masters = cluster.masters()
    target = next(p for p in masters if p != source)
    src, dst = cluster.client(source), cluster.client(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", masters[source])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", masters[target])
    # every key of the slot moves (other tests' keys may share it): a master refuses to
    # give up a slot it still holds keys of
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
    src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    return source, target


def finish_migration(cluster: Cluster, key: str, target: int) -> None:
    masters = cluster.masters()
    for port in masters:
        with contextlib.closing(cluster.client(port)) as node:
            node.execute_command("CLUSTER", "SETSLOT", key_slot(key), "NODE", masters[target])


def test_ask_during_a_migration_and_moved_after_it(cluster: Cluster) -> None:
    async def scenario() -> None:
        client = cluster_client(cluster)
        try:
            tag = uuid.uuid4()
            key, neighbour = f"{{moving-{tag}}}:a", f"{{moving-{tag}}}:b"  # one slot
            await client.call("SET", key, "here")
            await client.call("SET", neighbour, "too")
            _, target = migrate(cluster, key)
            # the source no longer has the key: ASK, answered by the target after ASKING
            assert await client.call("GET", key) == b"here"
            finish_migration(cluster, key, target)
            # the client still routes the slot to the source: MOVED, refreshed, retried
            assert await client.call("GET", key) == b"here"
            assert ("127.0.0.1", target) == client._table[key_slot(key)]
            assert await client.call("GET", neighbour) == b"too"
        finally:
            client.close()

    run(scenario())


LIMITS = LimitTable(
    [
        LimitRow("tenant", "t-tenant", "tenant", requests_per_minute=10),
        LimitRow("environment", "e-env", "environment", requests_per_minute=10),
        LimitRow("key", "k-key", "key", requests_per_minute=10),
    ],
    default_key_rpm=600,
)


def limiter(client: RedisClient, table: LimitTable) -> RateLimiter:
    return RateLimiter(
        counters=RedisCounters(client), metrics=RateLimitMetrics(CollectorRegistry()), table=table
    )


Connect = Callable[[], RedisClient]


@pytest.fixture(params=["redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """The same limiter suite on a single Redis and on the cluster: a client factory (a
    client belongs to the event loop of the scenario that makes it)."""
    if request.param == "cluster":
        cluster: Cluster = request.getfixturevalue("cluster")
        yield lambda: cluster_client(cluster)
        return
    with running_redis() as port:
        yield lambda: PipelinedRedis("127.0.0.1", port, timeout=1.0)


@pytest.mark.parametrize(
    "who",
    [
        Identity("t-tenant", "e-other", "k-other", plan="x"),
        Identity("t-other", "e-env", "k-other2", plan="x"),
        Identity("t-other2", "e-other2", "k-key", plan="x"),
    ],
    ids=["tenant", "environment", "key"],
)
def test_each_layer_is_exact_in_its_tenant_slot(backend: Connect, who: Identity) -> None:
    async def scenario() -> list[bool]:
        client = backend()
        shared = limiter(client, LIMITS)
        decisions = await asyncio.gather(*(shared.decide(who, tokens=0) for _ in range(30)))
        client.close()
        return [d is not None and d.allowed for d in decisions]

    assert run(scenario()).count(True) == 10


def test_the_global_layer_is_one_budget_for_two_limiters(backend: Connect) -> None:
    table = LimitTable(
        [
            LimitRow("global", "", "global", requests_per_minute=12),
            LimitRow("key", "k-small", "key", requests_per_minute=2),
        ],
        default_key_rpm=600,
    )

    async def scenario() -> tuple[int, int]:
        client = backend()
        await client.call("DEL", "crosslogic:rl:global:all:requests:60")  # an earlier run's
        registry = CollectorRegistry()
        first = RateLimiter(
            counters=RedisCounters(client), metrics=RateLimitMetrics(registry), table=table
        )
        second = limiter(client, table)
        refused = await first.decide(Identity("t", "e", "k-small", plan="x"), tokens=0)
        for _ in range(3):  # 2 admitted, then refused by the key layer: units given back
            refused = await first.decide(Identity("t", "e", "k-small", plan="x"), tokens=0)
        assert refused is not None and refused.refused_by is not None
        assert refused.refused_by.layer == "key"
        tasks = [
            (first if i % 2 else second).decide(Identity(f"t{i}", "e", f"k{i}", "x"), tokens=0)
            for i in range(40)
        ]
        decisions = await asyncio.gather(*tasks)
        admitted = sum(1 for d in decisions if d is not None and d.allowed)
        global_refusals = sum(
            1
            for d in decisions
            if d is not None and d.refused_by is not None and d.refused_by.layer == "global"
        )
        client.close()
        # a limit of 12 per minute leases one unit at a time: one script call per unit
        granted = registry.get_sample_value(
            "crosslogic_ratelimit_global_leases_total", {"result": "granted"}
        )
        assert granted is not None and 3 <= granted <= 12
        return admitted, global_refusals

    admitted, global_refusals = run(scenario())
    assert admitted == 10 and global_refusals == 30  # 12 in all: 2 by k-small, 10 here


def test_global_tokens_are_debited_within_the_stated_bound(backend: Connect) -> None:
    limit, cost = 6000, 500  # a slice is 10 tokens: a tenth of a second of 100 tokens/s
    table = LimitTable(
        [LimitRow("global", "", "global", tokens_per_minute=limit)], default_key_rpm=600
    )

    async def scenario() -> int:
        client = backend()
        await client.call("DEL", "crosslogic:rl:global:all:tokens:60")
        first, second = limiter(client, table), limiter(client, table)
        decisions = await asyncio.gather(
            *(
                (first if i % 2 else second).decide(
                    Identity(f"t{i}", "e", f"k{i}", "x"), tokens=cost
                )
                for i in range(40)
            )
        )
        client.close()
        return cost * sum(1 for d in decisions if d is not None and d.allowed)

    admitted = run(scenario())
    processes, one_slice = 2, 10
    # never over the limit but for one reservation and one slice per process; under it by
    # at most the slices leased and left unused
    assert limit - processes * one_slice <= admitted <= limit + processes * (cost + one_slice)


def test_settlement_groups_counters_by_slot(cluster: Cluster) -> None:
    async def scenario() -> None:
        client = cluster_client(cluster)
        try:
            counters = [
                (f"crosslogic:rl:{{t:{i}}}:tenant:{i}:tokens:60", 600_000.0) for i in range(20)
            ]
            counters.append(("crosslogic:rl:key:k-old:tokens:60", 600_000.0))  # older layout
            settler = TokenSettler(client, CollectorRegistry())
            await settler.settle([Settlement("r1", tuple(counters), 50)])
            assert settler.pending == 0
            values = await asyncio.gather(*(client.call("GET", k) for k, _ in counters))
            assert all(v is not None and int(v) > time.time() * 1e6 for v in values)
        finally:
            client.close()

    run(scenario())


def tenant_on(cluster: Cluster, port: int) -> str:
    """A tenant id whose hash tag falls in a slot of the master on ``port``."""
    with contextlib.closing(cluster.client(port)) as node:
        ranges = [
            (int(start), int(end))
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS")
            if int(primary[1]) == port
        ]
    return next(
        f"t{i}"
        for i in range(100_000)
        if any(start <= key_slot(f"{{t:t{i}}}") <= end for start, end in ranges)
    )


def test_a_killed_master_is_unavailable_then_its_replica_serves() -> None:
    # its own cluster, with replicas: this one loses a master
    with running_cluster(replicas=1) as failing:

        async def scenario() -> None:
            client = cluster_client(failing, timeout=0.5)
            try:
                key = f"failover:{uuid.uuid4()}"
                await client.call("SET", key, "kept")
                master = failing.master_of(key_slot(key))
                # a tenant whose counters live on that master
                tenant = tenant_on(failing, master)
                with contextlib.closing(failing.client(master)) as node:
                    node.execute_command("WAIT", 1, 2000)  # on the replica before the kill
                failing.kill(master)
                with pytest.raises(Unavailable):
                    await client.call("GET", key)
                # the limiter meanwhile decides alone (fail open), without waiting on Redis
                who = Identity(tenant, "e", "k", plan="x")
                during = await limiter(client, LIMITS).decide(who, tokens=0)
                assert during is not None and during.allowed and during.degraded

                async def served() -> bool:
                    try:
                        return await client.call("GET", key) == b"kept"
                    except Unavailable:
                        return False

                deadline = time.monotonic() + 20
                while not await served():
                    assert time.monotonic() < deadline, "the replica never took over"
                    await asyncio.sleep(0.2)
                assert ("127.0.0.1", master) not in client.masters()
                after = await limiter(client, LIMITS).decide(who, tokens=0)
                assert after is not None and after.allowed and not after.degraded
            finally:
                client.close()

        run(scenario())
        wait_until("the cluster to be whole again", failing.healthy, timeout=20)
