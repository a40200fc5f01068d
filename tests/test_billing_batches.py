"""Whole batches through the access-log consumer, against the real Postgres and Redis: a
batch mixing tenants, models, regions, prices and endings across an hour boundary; and
duplicates, inside a batch, against rows already written, and in a replay after a crash
before the offset committed (nothing billed, settled or counted twice)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from crosslogic.billing import aggregation
from crosslogic.billing.batch import read
from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.settlement import TokenSettler
from crosslogic.db.connection import connect, create_pool
from crosslogic.journal.store import JournalStore
from crosslogic.redis_client import open_redis
from crosslogic.stack import Stack
from tests.support import access_log
from tests.support.access_log import World
from tests.support.db import run_db

D = Decimal
HOUR = datetime(2026, 11, 30, 10, tzinfo=UTC)
LIST = (D("0.15"), D("0.6"), D("0.02"))  # access_log.seed's list prices
CONTRACT = (D("0.1"), D("0.4"), D("0.01"))
MULTIPLIERS = (D(1), D("1.25"))  # of its nodes' regions, in order


def world_of(stack: Stack) -> World:
    async def seed() -> World:
        conn = await connect(stack.settings)
        try:
            return await access_log.seed(conn, prefix=f"b{uuid.uuid4().hex[:8]}")
        finally:
            await conn.close()

    return asyncio.run(seed())


async def consume(
    stack: Stack, log: Path, *, steps: int = 100
) -> tuple[set[str], CollectorRegistry]:
    """Runs a consumer (settling in the stack's Redis) until the file is consumed; returns
    the tenants it told the quota keeper about and its metrics."""
    pool = await create_pool(stack.settings)
    redis = open_redis(stack.settings, timeout=1.0)
    registry = CollectorRegistry()
    marked: set[str] = set()
    try:
        consumer = AccessLogConsumer(
            pool,
            log,
            BillingMetrics(registry),
            settler=TokenSettler(redis, registry),
            journal=JournalStore(redis),
            committed=marked.update,
        )
        for _ in range(steps):
            if not await consumer.step():
                break
        return marked, registry
    finally:
        redis.close()
        await pool.close()


def expected(world: World, entry: dict[str, Any]) -> tuple[int, int, Decimal, Decimal]:
    """Tokens, cost and multiplier of a billable entry by access_log.seed's prices."""
    if entry["prompt_tokens"] is not None:
        prompt, completion = int(entry["prompt_tokens"]), int(entry["completion_tokens"])
    elif entry["completion_seen"] is not None:  # a stream the client left
        prompt, completion = int(entry["prompt_estimate"]), int(entry["completion_seen"])
    else:  # the node failed it: nothing generated
        prompt, completion = 0, 0
    model = int(entry["model_id"])
    tenants = [k.tenant_id for k in world.keys]
    multiplier = MULTIPLIERS[world.nodes.index(str(entry["upstream_node"]))]
    contract = entry["tenant_id"] == tenants[0] and model == world.models[0]
    rates = CONTRACT if contract else LIST
    with localcontext() as exact:
        exact.prec = 80
        if entry["path"] == "/v1/embeddings":
            cost = prompt * rates[2] / 1_000_000
        else:
            cost = (prompt * rates[0] + completion * rates[1]) / 1_000_000
        if not contract:
            cost *= multiplier
        if entry["tenant_id"] == tenants[2] and model == world.models[0]:
            cost = cost * D("87.5") / 100
        rounded = cost.quantize(D("1e-10"), rounding=ROUND_HALF_EVEN)
        return prompt, completion, rounded, D(1) if contract else multiplier


def test_a_batch_mixing_tenants_models_prices_and_hours(stack: Stack, tmp_path: Path) -> None:
    world = world_of(stack)
    start = HOUR - timedelta(seconds=2)  # 600 lines 7 ms apart: 286 before 10:00, the rest after
    entries = access_log.entries(world, 600, seed_value=11, start=start)
    log = tmp_path / "access.log"
    log.write_bytes(access_log.encoded(entries))
    marks, _ = asyncio.run(consume(stack, log))

    billable = [e for e in entries if e["upstream_host"]]
    rows = {
        r["request_id"]: r
        for r in run_db(
            stack,
            "SELECT request_id, tenant_id::text, model_id, prompt_tokens, completion_tokens,"
            " cost_usd, region_code, price_multiplier, tenant_price_id, usage_estimated"
            " FROM usage_records WHERE request_id = ANY($1)",
            [e["request_id"] for e in entries],
        )
    }
    assert set(rows) == {e["request_id"] for e in billable}  # the rate-limited: no row
    tenants = {k.tenant_id for k in world.keys}
    assert marks == tenants  # every tenant with new rows, told to the quota keeper
    for e in billable:
        row = rows[e["request_id"]]
        prompt, completion, cost, multiplier = expected(world, e)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion), e
        assert (row["cost_usd"], row["price_multiplier"]) == (cost, multiplier), e
        assert row["usage_estimated"] == (e["flags"] == "DC"), e
    assert {r["tenant_id"] for r in rows.values()} == tenants
    assert {r["model_id"] for r in rows.values()} == set(world.models)
    assert len({r["region_code"] for r in rows.values()} - {None}) == 2
    assert len({r["tenant_price_id"] for r in rows.values()}) == 3  # contract, discount, none

    async def aggregate() -> dict[datetime, int]:
        conn = await connect(stack.settings)
        try:
            counts = {}
            for hour in (HOUR - timedelta(hours=1), HOUR):
                await aggregation.aggregate_hour(conn, hour)
                counts[hour] = await conn.fetchval(
                    "SELECT coalesce(sum(request_count), 0) FROM usage_hourly"
                    " WHERE hour = $1 AND tenant_id = ANY($2::uuid[])",
                    hour,
                    [k.tenant_id for k in world.keys],
                )
            return counts
        finally:
            await conn.close()

    before = sum(1 for e in billable if str(e["start_time"]) < "2026-11-30T10:00:00")
    assert 0 < before < len(billable)
    assert asyncio.run(aggregate()) == {
        HOUR - timedelta(hours=1): before,
        HOUR: len(billable) - before,
    }


def test_duplicates_in_a_batch_against_rows_and_in_a_replay(stack: Stack, tmp_path: Path) -> None:
    """Each request is billed, settled and counted once: a line twice in one batch, a line
    of a batch already written, and a whole replay after a crash before the offset."""
    world = world_of(stack)
    entries = access_log.entries(world, 40, seed_value=5, start=HOUR)
    # one counter per request, charged 10 tokens more than reserved, at 1 s per token
    for e in entries:
        e.update(status=200, flags="-", streamed=None, upstream_host="10.0.0.1:8000")
        e.update(prompt_tokens=30.0, completion_tokens=20.0, completion_seen=None)
        e.update(upstream_node=world.nodes[0])
        e["reservation"] = {"tokens": 40.0, "counters": [[f"test:{e['request_id']}", 1e6]]}
    log = tmp_path / "access.log"
    first, second = entries[:30], entries[30:]
    log.write_bytes(access_log.encoded([*first, first[3]]))  # twice in one batch
    asyncio.run(consume(stack, log))
    with log.open("ab") as f:  # the next batch repeats three lines already written
        f.write(access_log.encoded([first[0], *second, first[10], first[20]]))
    _, registry = asyncio.run(consume(stack, log))
    assert registry.get_sample_value("crosslogic_billing_usage_records_total") == 10
    # a crash after the rows, before the offset: the whole file is read again
    run_db(stack, "DELETE FROM access_log_offsets WHERE path = $1", str(log))
    marks, registry = asyncio.run(consume(stack, log))
    assert not marks and registry.get_sample_value("crosslogic_billing_usage_records_total") == 0

    ids = [e["request_id"] for e in entries]
    counted = run_db(
        stack,
        "SELECT request_id, count(*) AS n FROM usage_records WHERE request_id = ANY($1)"
        " GROUP BY request_id",
        ids,
    )
    assert {r["request_id"]: r["n"] for r in counted} == dict.fromkeys(ids, 1)

    async def settled() -> list[float]:
        redis = open_redis(stack.settings, timeout=1.0)
        try:
            now = await redis.call("TIME")
            now_us = int(now[0]) * 1_000_000 + int(now[1])
            values = [await redis.call("GET", f"test:{rid}") for rid in ids]
            return [(int(v) - now_us) / 1e6 for v in values]
        finally:
            redis.close()

    # each counter moved once, by 10 tokens x 1 s (less the seconds since): never twice
    ahead = asyncio.run(settled())
    assert all(0 < s <= 10 for s in ahead), ahead


def test_a_batch_counts_and_settles_each_request_once() -> None:
    """Pure: a line twice in the batch, a line already billed, a non-billable line."""
    world = World([access_log.Key("t", "e", "k")], [1, 2, 3], ["n0", "n1"])
    lines = access_log.entries(world, 4, seed_value=3)
    for e in lines:
        e.update(status=200, upstream_host="10.0.0.1:8000", prompt_tokens=1.0)
        e.update(completion_tokens=1.0, boot="a" * 16)
    lines[3].update(status=429, upstream_host=None, upstream_node=None, boot="b" * 16)
    raw = access_log.encoded([*lines[:3], lines[0], lines[3]]).splitlines()
    batch = read([*raw, b"garbage"], last_boot="c" * 16)
    ids = [str(e["request_id"]) for e in lines]
    assert [r.request_id for r in batch.records] == [*ids[:3], ids[0]]
    assert len(batch.malformed) == 1
    assert (batch.replaced, batch.last_boot) == (["c" * 16, "a" * 16], "b" * 16)
    # the insert wrote rows 0 and 2 (row 1 existed already): each counted and settled once,
    # and the refused request's reservation settled too (it never has a row)
    written = {ids[0], ids[2]}
    assert [r.request_id for r in batch.inserted(written)] == [ids[0], ids[2]]
    assert [s.request_id for s in batch.due(written)] == [ids[0], ids[2], ids[3]]
