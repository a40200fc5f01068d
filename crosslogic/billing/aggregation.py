"""Hourly aggregation: ``usage_hourly`` recomputed from ``usage_records``, hour by hour.

An hour is aggregated by recomputing it from its rows and replacing its aggregates in one
transaction (only the groups whose sums changed are written, so ``updated_at`` says when an
aggregate last changed). Re-running an hour changes nothing; an hour that receives rows
after it was aggregated (late access-log lines, the journal's recovery) is marked again by
``usage_records``' triggers (migration 0008) and aggregated again by the next run. The same
transaction recomputes the hour's reserved capacity coverage (``reserved_usage``).

Concurrency: each hour is aggregated under a transaction-level advisory lock of its own, so
a second run on the same hour (the billing service and ``crosslogic billing aggregate``)
waits for the first and then recomputes from what is committed: never a double count, never
an older snapshot written over a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crosslogic.billing import reserved_hours
from crosslogic.billing.hours import lag_seconds
from crosslogic.db.errors import postgres_errors

log = logging.getLogger(__name__)

LOCK_CLASS = 0x41474752  # "AGGR": advisory locks (LOCK_CLASS, hour index) of aggregation
# One hour of a million rows takes seconds: more than the pool's 10 s command timeout
# allows on a loaded box, far less than this.
HOUR_TIMEOUT_S = 600.0
RETRY_MAX_S = 30.0

# $1: the hour. Groups that disappeared (rows deleted) are removed; an unchanged group is
# not rewritten. Costs are exact sums of the rows' costs (numeric, no rounding).
_REPLACE = """
WITH fresh AS (
    SELECT tenant_id, environment_id, model_id, coalesce(region_code, '') AS region_code,
           count(*) AS request_count, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(cost_usd) AS cost_usd
    FROM usage_records
    WHERE started_at >= $1::timestamptz AND started_at < $1::timestamptz + interval '1 hour'
    GROUP BY 1, 2, 3, 4
), gone AS (
    DELETE FROM usage_hourly AS h
    WHERE h.hour = $1 AND NOT EXISTS (
        SELECT 1 FROM fresh AS f
        WHERE (f.tenant_id, f.environment_id, f.model_id, f.region_code)
            = (h.tenant_id, h.environment_id, h.model_id, h.region_code))
    RETURNING 1
), changed AS (
    INSERT INTO usage_hourly AS h (hour, tenant_id, environment_id, model_id, region_code,
        request_count, prompt_tokens, completion_tokens, cost_usd, updated_at)
    SELECT $1, tenant_id, environment_id, model_id, region_code,
           request_count, prompt_tokens, completion_tokens, cost_usd, now()
    FROM fresh
    ON CONFLICT (tenant_id, environment_id, model_id, region_code, hour) DO UPDATE SET
        request_count = excluded.request_count, prompt_tokens = excluded.prompt_tokens,
        completion_tokens = excluded.completion_tokens, cost_usd = excluded.cost_usd,
        updated_at = excluded.updated_at
    WHERE (h.request_count, h.prompt_tokens, h.completion_tokens, h.cost_usd)
        IS DISTINCT FROM (excluded.request_count, excluded.prompt_tokens,
                          excluded.completion_tokens, excluded.cost_usd)
    RETURNING 1
)
SELECT (SELECT count(*) FROM fresh) AS groups, (SELECT count(*) FROM changed) AS changed,
       (SELECT count(*) FROM gone) AS removed
"""


@dataclass(frozen=True)
class HourResult:
    """What aggregating one hour did. ``clean``: no write it could not see is pending."""

    hour: datetime
    groups: int
    changed: int
    removed: int
    clean: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "hour": self.hour.isoformat(),
            "groups": self.groups,
            "changed": self.changed,
            "removed": self.removed,
            "clean": self.clean,
        }


def hour_index(hour: datetime) -> int:
    """The hour's advisory-lock key: hours since the epoch (fits PostgreSQL's int4)."""
    return int(hour.timestamp()) // 3600


async def aggregate_hour(conn: asyncpg.Connection, hour: datetime) -> HourResult:
    """Recompute ``hour`` from its rows and replace its aggregates, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            LOCK_CLASS,
            hour_index(hour),
            timeout=HOUR_TIMEOUT_S,
        )
        # read before the rows: a write committed after it leaves a newer version
        mark = await conn.fetchrow(
            "SELECT version, clock_timestamp() AS read_at FROM usage_hours_dirty WHERE hour = $1",
            hour,
        )
        counts = await conn.fetchrow(_REPLACE, hour, timeout=HOUR_TIMEOUT_S)
        # reserved capacity's share of the hour, as current as its aggregates
        await reserved_hours.cover(conn, hour)
        clean = True
        if mark is not None:
            deleted = await conn.fetchval(
                "DELETE FROM usage_hours_dirty WHERE hour = $1 AND version = $2 RETURNING 1",
                hour,
                mark["version"],
            )
            if deleted is None:
                # rows committed since the mark was read are not in this result: the hour
                # stays marked, and what it lacks is no older than that read
                clean = False
                await conn.execute(
                    "UPDATE usage_hours_dirty SET dirty_since = greatest(dirty_since, $2) "
                    "WHERE hour = $1",
                    hour,
                    mark["read_at"],
                )
    return HourResult(hour, counts["groups"], counts["changed"], counts["removed"], clean)


async def dirty_hours(conn: asyncpg.Connection) -> list[datetime]:
    """The hours marked as changed since they were last aggregated, oldest first."""
    rows = await conn.fetch("SELECT hour FROM usage_hours_dirty ORDER BY hour")
    return [r["hour"].astimezone(UTC) for r in rows]


async def aggregate_hours(conn: asyncpg.Connection, hours: Iterable[datetime]) -> list[HourResult]:
    """Aggregate each hour in order, each in its own transaction."""
    return [await aggregate_hour(conn, hour) for hour in hours]


async def aggregate_dirty(conn: asyncpg.Connection) -> list[HourResult]:
    """Aggregate every marked hour (each hour in its own transaction)."""
    return await aggregate_hours(conn, await dirty_hours(conn))


async def lag(conn: asyncpg.Connection) -> float:
    """Seconds since the oldest usage change that is not in ``usage_hourly`` yet (0: none)."""
    row = await conn.fetchrow(
        "SELECT min(dirty_since) AS oldest, clock_timestamp() AS now FROM usage_hours_dirty"
    )
    return lag_seconds(row["oldest"], now=row["now"])


class AggregationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "crosslogic_billing_aggregation_runs_total",
            "aggregation runs of the billing service, by outcome (ok, failed)",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "crosslogic_billing_aggregation_duration_seconds",
            "duration of one aggregation run (every marked hour)",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.hours = Counter(
            "crosslogic_billing_aggregated_hours_total",
            "hours recomputed by the billing service's aggregation",
            registry=registry,
        )
        self.lag = Gauge(
            "crosslogic_billing_aggregation_lag_seconds",
            "age of the oldest usage change not yet in usage_hourly (0: caught up)",
            registry=registry,
            multiprocess_mode="mostrecent",
        )


class Aggregator:
    """The billing service's aggregation: every marked hour, every ``interval`` seconds; the
    lag gauge more often. Transient failures (Postgres away) are logged and retried."""

    def __init__(self, pool: asyncpg.Pool, metrics: AggregationMetrics, *, interval: float) -> None:
        self._pool = pool
        self._metrics = metrics
        self._interval = interval

    async def run_once(self) -> list[HourResult]:
        started = time.monotonic()
        with postgres_errors():
            async with self._pool.acquire() as conn:
                results = await aggregate_dirty(conn)
                self._metrics.lag.set(await lag(conn))
        self._metrics.duration.observe(time.monotonic() - started)
        self._metrics.runs.labels("ok").inc()
        self._metrics.hours.inc(len(results))
        return results

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                results = await self.run_once()
                failures = 0
                if results:
                    log.info("aggregated %d hour(s)", len(results))
                delay = self._interval
            except Exception as exc:  # anything: logged, counted, retried; never silently fatal
                failures += 1
                self._metrics.runs.labels("failed").inc()
                log.error("aggregation failed (retry %d): %r", failures, exc)
                delay = min(self._interval, RETRY_MAX_S, 0.5 * 2**failures)
            await asyncio.sleep(delay)

    async def observe_forever(self, *, every: float = 5.0) -> None:
        while True:
            try:
                with postgres_errors():
                    async with self._pool.acquire() as conn:
                        self._metrics.lag.set(await lag(conn))
            except Exception as exc:  # the gauge keeps its last value; aggregation logs
                log.debug("aggregation lag unknown: %r", exc)
            await asyncio.sleep(every)
