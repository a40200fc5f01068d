"""Hourly aggregation: pure hour arithmetic, then against the stack's PostgreSQL: exact,
re-runnable, late rows re-aggregated, concurrent runs never double-count; reconciliation
and the ``crosslogic billing aggregate|reconcile`` commands with their exit statuses."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from crosslogic import times
from crosslogic.billing import aggregation, hours
from crosslogic.billing.reconcile import Window, reconcile
from crosslogic.db.connection import connect, create_pool
from crosslogic.errors import Invalid
from crosslogic.stack import Stack
from tests.support.cli import Cli, cli_ok
from tests.support.db import connect_and, run_db
from tests.support.metrics import metric
from tests.support.usage import Payer, add_usage, payer, unused_hour
from tests.support.waiting import wait_until

H = hours.HOUR


def test_times_read_as_utc_and_hours_must_be_whole() -> None:
    assert times.parse_time("2026-11-29", param="start") == datetime(2026, 11, 29, tzinfo=UTC)
    assert hours.parse_time("2026-11-29T21:30:00+01:00", param="x") == datetime(
        2026, 11, 29, 20, 30, tzinfo=UTC
    )
    assert hours.parse_hour("2026-11-29T20:00Z", param="hour").hour == 20
    with pytest.raises(Invalid) as bad:
        hours.parse_hour("2026-11-29T20:30Z", param="hour")
    assert bad.value.param == "hour"
    with pytest.raises(Invalid) as bad:
        hours.parse_time("yesterday", param="since")
    assert bad.value.param == "since" and "'since'" in bad.value.message


def test_windows_widen_to_whole_hours_and_refuse_empty_or_huge_ones() -> None:
    t = datetime(2026, 11, 29, 20, 15, tzinfo=UTC)
    assert hours.window(t, t + timedelta(minutes=10)) == (t - timedelta(minutes=15), t + H * 0.75)
    assert list(hours.hours_in(t, t + 2 * H)) == [
        t - timedelta(minutes=15) + i * H for i in (0, 1, 2)
    ]
    with pytest.raises(Invalid) as bad:
        hours.window(t, t)
    assert bad.value.param == "end"
    with pytest.raises(Invalid):
        hours.window(t, t + H * (hours.MAX_HOURS + 1))
    assert hours.lag_seconds(None, now=t) == 0
    assert hours.lag_seconds(t - timedelta(seconds=90), now=t) == 90
    assert aggregation.hour_index(datetime(1970, 1, 2, tzinfo=UTC)) == 24


def hourly(stack: Stack, who: Payer, hour: datetime) -> list[dict[str, Any]]:
    rows = run_db(
        stack,
        "SELECT region_code, request_count, prompt_tokens, completion_tokens, cost_usd"
        " FROM usage_hourly WHERE tenant_id = $1 AND hour = $2 ORDER BY region_code",
        who.tenant_id,
        hour,
    )
    return [dict(r) for r in rows]


def aggregate(stack: Stack, hour: datetime) -> aggregation.HourResult:
    result: aggregation.HourResult = connect_and(
        stack, lambda conn: aggregation.aggregate_hour(conn, hour)
    )
    return result


def test_an_hour_is_the_exact_sum_of_its_rows_and_rerunning_it_changes_nothing(
    stack: Stack,
) -> None:
    who, hour = payer(stack), unused_hour()
    add_usage(stack, who, hour, count=30, cost=Decimal("0.0000000001"), region="local")
    add_usage(stack, who, hour, count=7, prompt=3, completion=0)  # region unknown
    dirty = {r["hour"] for r in run_db(stack, "SELECT hour FROM usage_hours_dirty")}
    assert hour in dirty
    first = aggregate(stack, hour)
    assert (first.groups, first.changed, first.clean) == (2, 2, True)
    expected = [
        {"region_code": "", "request_count": 7, "prompt_tokens": 21, "completion_tokens": 0,
         "cost_usd": Decimal("0.0000086415")},
        {"region_code": "local", "request_count": 30, "prompt_tokens": 300,
         "completion_tokens": 600, "cost_usd": Decimal("0.0000000030")},
    ]  # fmt: skip
    assert hourly(stack, who, hour) == expected
    stamps = run_db(
        stack, "SELECT updated_at FROM usage_hourly WHERE tenant_id = $1", who.tenant_id
    )
    again = aggregate(stack, hour)
    assert (again.groups, again.changed, again.removed) == (2, 0, 0)
    assert hourly(stack, who, hour) == expected
    assert (
        run_db(stack, "SELECT updated_at FROM usage_hourly WHERE tenant_id = $1", who.tenant_id)
        == stamps
    )  # an unchanged group is not rewritten


def test_late_rows_mark_their_hour_again_and_deleted_rows_remove_their_group(
    stack: Stack,
) -> None:
    who, hour = payer(stack), unused_hour()
    add_usage(stack, who, hour, count=5)
    aggregate(stack, hour)
    marked = "SELECT count(*) AS n FROM usage_hours_dirty WHERE hour = $1"
    assert run_db(stack, marked, hour)[0]["n"] == 0
    add_usage(stack, who, hour, count=2, region="local")  # late: the hour was aggregated
    assert run_db(stack, marked, hour)[0]["n"] == 1
    results = connect_and(stack, aggregation.aggregate_dirty)
    assert hour in [r.hour for r in results]
    assert [r["request_count"] for r in hourly(stack, who, hour)] == [5, 2]
    run_db(stack, "DELETE FROM usage_records WHERE tenant_id = $1 AND region_code = 'local'",
           who.tenant_id)  # fmt: skip
    assert aggregate(stack, hour).removed == 1
    assert [r["request_count"] for r in hourly(stack, who, hour)] == [5]


def test_a_write_committed_during_aggregation_leaves_the_hour_marked(stack: Stack) -> None:
    """The race that a 'dirty' flag alone loses: a row committed between the aggregator's
    read and its unmarking. The version it read has changed, so the hour stays marked."""
    who, hour = payer(stack), unused_hour()
    add_usage(stack, who, hour, count=4)

    async def go() -> tuple[aggregation.HourResult, aggregation.HourResult]:
        writer, reader = await connect(stack.settings), await connect(stack.settings)
        try:
            txn = writer.transaction()
            await txn.start()
            await writer.execute(
                "INSERT INTO usage_records (request_id, tenant_id, environment_id, api_key_id,"
                " model_id, endpoint, prompt_tokens, completion_tokens, cost_usd, status_code,"
                " started_at, duration_ms) VALUES (gen_random_uuid()::text, $1, $2, $3, $4,"
                " '/v1/completions', 1, 1, 0, 200, $5, 1)",
                who.tenant_id, who.environment_id, who.api_key_id, who.model_id, hour,
            )  # fmt: skip
            running = asyncio.create_task(aggregation.aggregate_hour(reader, hour))
            # the aggregator has computed without the row and waits on the writer's mark
            for _ in range(1000):
                if await blocked(writer, reader):
                    break
                await asyncio.sleep(0.02)
            await txn.commit()
            first = await running
            return first, await aggregation.aggregate_hour(reader, hour)
        finally:
            await writer.close()
            await reader.close()

    first, second = asyncio.run(go())
    assert first.clean is False
    assert second.clean is True
    assert [r["request_count"] for r in hourly(stack, who, hour)] == [5]


async def blocked(observer: asyncpg.Connection, waiter: asyncpg.Connection) -> bool:
    pid = waiter.get_server_pid()
    waiting = await observer.fetchval("SELECT cardinality(pg_blocking_pids($1)) > 0", pid)
    return bool(waiting)


def test_concurrent_runs_and_writes_never_double_count(stack: Stack) -> None:
    who, hour = payer(stack), unused_hour()

    async def go() -> None:
        pool = await create_pool(stack.settings, min_size=1, max_size=6)
        try:

            async def run() -> None:
                async with pool.acquire() as conn:
                    for _ in range(3):
                        await aggregation.aggregate_hour(conn, hour)

            async def write() -> None:
                for _ in range(10):
                    await asyncio.to_thread(add_usage, stack, who, hour, count=10)

            await asyncio.gather(run(), run(), run(), write())
            async with pool.acquire() as conn:
                await aggregation.aggregate_dirty(conn)
        finally:
            await pool.close()

    asyncio.run(go())
    assert [r["request_count"] for r in hourly(stack, who, hour)] == [100]
    window = Window(hour, hour + H)
    report = connect_and(stack, lambda conn: reconcile(conn, window))
    assert report.differences == [] and report.pending_hours == []


def test_the_service_loop_counts_runs_and_reports_its_lag(stack: Stack) -> None:
    who, hour = payer(stack), unused_hour()
    add_usage(stack, who, hour, count=3)
    registry = CollectorRegistry()

    async def go() -> list[aggregation.HourResult]:
        pool = await create_pool(stack.settings, min_size=1, max_size=2)
        try:
            aggregator = aggregation.Aggregator(
                pool, aggregation.AggregationMetrics(registry), interval=60
            )
            return await aggregator.run_once()
        finally:
            await pool.close()

    assert hour in [r.hour for r in asyncio.run(go())]
    assert (
        registry.get_sample_value("crosslogic_billing_aggregation_runs_total", {"outcome": "ok"})
        == 1
    )
    assert registry.get_sample_value("crosslogic_billing_aggregation_duration_seconds_count") == 1
    assert registry.get_sample_value("crosslogic_billing_aggregation_lag_seconds") is not None
    assert [r["request_count"] for r in hourly(stack, who, hour)] == [3]


def test_cli_aggregates_on_demand_and_reconcile_prints_every_difference(
    stack: Stack, cli: Cli
) -> None:
    who, hour = payer(stack), unused_hour()
    add_usage(stack, who, hour, count=6)
    add_usage(stack, who, hour + H, count=2)
    span = ["--since", hour.isoformat(), "--until", (hour + 2 * H).isoformat()]
    pending = cli_ok(cli("billing", "reconcile", *span))
    assert pending["differences"] == [] and len(pending["pending_hours"]) == 2
    done = cli_ok(cli("billing", "aggregate", "--hour", hour.isoformat()))
    assert [h["hour"] for h in done["hours"]] == [hour.isoformat()]
    both = cli_ok(cli("billing", "aggregate", *span))
    assert len(both["hours"]) == 2 and both["hours"][0]["changed"] == 0
    assert cli_ok(cli("billing", "reconcile", *span))["differences"] == []

    # an aggregate edited behind the aggregator's back is a difference: exit 1
    run_db(stack, "UPDATE usage_hourly SET prompt_tokens = 1 WHERE tenant_id = $1 AND hour = $2",
           who.tenant_id, hour)  # fmt: skip
    code, out, _ = cli("billing", "reconcile", *span)
    assert code == 1
    (difference,) = json.loads(out)["differences"]
    assert difference["field"] == "prompt_tokens"
    assert (difference["expected"], difference["found"]) == ("60", "1")
    cli_ok(cli("billing", "aggregate", "--hour", hour.isoformat()))  # repaired
    assert cli("billing", "reconcile", *span)[0] == 0


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--hour", "2026-11-29T20:30:00Z"], "'hour'"),
        (["--hour", "soon"], "'hour'"),
        (["--since", "2026-11-29T20:00Z", "--until", "2026-11-29T19:00Z"], "'until'"),
        (["--until", "2026-11-29T19:00Z"], "--since"),
        (["--hour", "2026-11-29T20:00Z", "--since", "2026-11-29T19:00Z"], "--hour"),
    ],
)
def test_cli_bad_arguments_exit_2_naming_them(cli: Cli, argv: list[str], named: str) -> None:
    code, out, err = cli("billing", "aggregate", *argv)
    assert (code, out) == (2, "")
    assert named in err


def test_the_billing_service_runs_the_aggregation_loop(stack: Stack) -> None:
    """Its first run is at start; the gauges are served on the control plane's /metrics."""
    runs = 'crosslogic_billing_aggregation_runs_total{outcome="ok"}'
    wait_until("an aggregation run of the billing service", lambda: metric(stack, runs) >= 1)
