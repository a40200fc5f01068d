"""Usage rows against the hourly aggregates (``usage_hourly``)."""

from __future__ import annotations

from datetime import UTC

import asyncpg

from crosslogic.billing.reconcile.findings import Difference, Window, text

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
                    Difference("usage_hourly", subject, measure, text(expected), text(found))
                )
    return differences
