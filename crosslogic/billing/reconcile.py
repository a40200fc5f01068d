"""Reconciliation: the billing tables compared with each other, every difference named.

A check is an async function ``(connection, window) -> differences``; ``CHECKS`` holds
them by name, and ``crosslogic billing reconcile`` runs them all in one read-only snapshot.
Usage rows against the hourly aggregates is the first; a ledger or an export adds its own
check (for example credits against priced usage, exported events against aggregates) to
``CHECKS``. Hours waiting for aggregation are reported as pending, not as differences: they
are expected to differ until the next run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Window:
    """Hours starting in ``[start, end)``; None: unbounded on that side."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Difference:
    """One value that two tables disagree on: ``expected`` (from the source of truth, e.g.
    usage rows) and ``found`` (e.g. the aggregate); None where a side has no row at all."""

    check: str
    subject: Mapping[str, Any]
    field: str
    expected: str | None
    found: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            **self.subject,
            "field": self.field,
            "expected": self.expected,
            "found": self.found,
        }


Check = Callable[[asyncpg.Connection, Window], Awaitable[list[Difference]]]


@dataclass(frozen=True)
class Reconciliation:
    checks: tuple[str, ...]
    pending_hours: list[datetime]
    differences: list[Difference] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": list(self.checks),
            "pending_hours": [h.isoformat() for h in self.pending_hours],
            "differences": [d.as_dict() for d in self.differences],
        }


_MEASURES = ("request_count", "prompt_tokens", "completion_tokens", "cost_usd")
_KEYS = ("hour", "tenant_id", "environment_id", "model_id", "region_code")

# $1, $2: the window (NULL: unbounded). Hours marked for aggregation are left out.
_USAGE_VS_HOURLY = f"""
WITH fresh AS (
    SELECT date_trunc('hour', started_at, 'UTC') AS hour, tenant_id, environment_id, model_id,
           coalesce(region_code, '') AS region_code, count(*) AS request_count,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost_usd) AS cost_usd
    FROM usage_records
    WHERE ($1::timestamptz IS NULL OR started_at >= $1)
      AND ($2::timestamptz IS NULL OR started_at < $2)
    GROUP BY 1, 2, 3, 4, 5
), aggregated AS (
    SELECT {", ".join(_KEYS + _MEASURES)} FROM usage_hourly
    WHERE ($1::timestamptz IS NULL OR hour >= $1) AND ($2::timestamptz IS NULL OR hour < $2)
)
SELECT hour, tenant_id::text, environment_id::text, model_id, region_code,
       {", ".join(f"f.{m} AS rows_{m}, a.{m} AS hourly_{m}" for m in _MEASURES)}
FROM fresh AS f FULL JOIN aggregated AS a USING ({", ".join(_KEYS)})
WHERE ({", ".join(f"f.{m}" for m in _MEASURES)})
    IS DISTINCT FROM ({", ".join(f"a.{m}" for m in _MEASURES)})
  AND NOT EXISTS (SELECT 1 FROM usage_hours_dirty AS d WHERE d.hour = coalesce(f.hour, a.hour))
ORDER BY hour, tenant_id, environment_id, model_id, region_code
"""


def _text(value: object) -> str | None:
    return None if value is None else str(value)


async def usage_vs_hourly(conn: asyncpg.Connection, window: Window) -> list[Difference]:
    """Every aggregate that is not the sum of its hour's usage rows (or that is missing,
    or that has no rows)."""
    differences = []
    for row in await conn.fetch(_USAGE_VS_HOURLY, window.start, window.end):
        subject = {
            "hour": row["hour"].astimezone(UTC).isoformat(),
            "tenant_id": row["tenant_id"],
            "environment_id": row["environment_id"],
            "model_id": row["model_id"],
            "region_code": row["region_code"],
        }
        for measure in _MEASURES:
            expected, found = row[f"rows_{measure}"], row[f"hourly_{measure}"]
            if expected != found:
                differences.append(
                    Difference("usage_hourly", subject, measure, _text(expected), _text(found))
                )
    return differences


CHECKS: dict[str, Check] = {"usage_hourly": usage_vs_hourly}


async def reconcile(
    conn: asyncpg.Connection, window: Window, *, checks: Mapping[str, Check] = CHECKS
) -> Reconciliation:
    """Run ``checks`` in one repeatable-read snapshot (the tables as of one moment)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        pending = await conn.fetch(
            "SELECT hour FROM usage_hours_dirty WHERE ($1::timestamptz IS NULL OR hour >= $1) "
            "AND ($2::timestamptz IS NULL OR hour < $2) ORDER BY hour",
            window.start,
            window.end,
        )
        differences = [d for check in checks.values() for d in await check(conn, window)]
    return Reconciliation(tuple(checks), [r["hour"].astimezone(UTC) for r in pending], differences)
