"""Each reserved hour's coverage (``reserved_usage``): computed from the usage rows by the
rule of :mod:`crosslogic.billing.reservations`, written by aggregation in the transaction
that aggregates the hour, and recomputed by reconciliation to check what was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from crosslogic.billing.reservations import Coverage, MinuteUsage, cover_hour

# $1, $2: usage started in [$1, $2) (NULL: unbounded). Each reservation's usage in its scope
# and period, per hour and minute.
_MINUTES = """
SELECT r.id, r.tenant_id, r.model_id, r.tokens_per_minute,
       date_trunc('hour', u.started_at, 'UTC') AS hour,
       date_trunc('minute', u.started_at) AS minute,
       sum(u.prompt_tokens)::bigint AS prompt_tokens,
       sum(u.completion_tokens)::bigint AS completion_tokens,
       sum(u.cost_usd) AS cost
FROM reservations r
JOIN usage_records u
  ON u.tenant_id = r.tenant_id AND u.model_id = r.model_id
 AND (r.region_code IS NULL OR u.region_code = r.region_code)
 AND u.started_at >= r.starts_at AND u.started_at < r.ends_at
WHERE ($1::timestamptz IS NULL OR u.started_at >= $1)
  AND ($2::timestamptz IS NULL OR u.started_at < $2)
  AND ($1::timestamptz IS NULL OR r.ends_at > $1)
  AND ($2::timestamptz IS NULL OR r.starts_at < $2)
GROUP BY r.id, hour, minute
"""
_UPSERT = """
INSERT INTO reserved_usage AS x (reservation_id, hour, tenant_id, model_id,
    used_prompt_tokens, used_completion_tokens, used_cost_usd,
    covered_prompt_tokens, covered_completion_tokens, covered_cost_usd, minutes_over)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (reservation_id, hour) DO UPDATE SET
    used_prompt_tokens = excluded.used_prompt_tokens,
    used_completion_tokens = excluded.used_completion_tokens,
    used_cost_usd = excluded.used_cost_usd,
    covered_prompt_tokens = excluded.covered_prompt_tokens,
    covered_completion_tokens = excluded.covered_completion_tokens,
    covered_cost_usd = excluded.covered_cost_usd,
    minutes_over = excluded.minutes_over, updated_at = now()
WHERE (x.used_prompt_tokens, x.used_completion_tokens, x.used_cost_usd,
       x.covered_prompt_tokens, x.covered_completion_tokens, x.covered_cost_usd, x.minutes_over)
    IS DISTINCT FROM (excluded.used_prompt_tokens, excluded.used_completion_tokens,
       excluded.used_cost_usd, excluded.covered_prompt_tokens,
       excluded.covered_completion_tokens, excluded.covered_cost_usd, excluded.minutes_over)
"""
# the columns of reserved_usage that hold a Coverage, in Coverage's field order
COLUMNS = (
    "used_prompt_tokens",
    "used_completion_tokens",
    "used_cost_usd",
    "covered_prompt_tokens",
    "covered_completion_tokens",
    "covered_cost_usd",
    "minutes_over",
)


@dataclass(frozen=True)
class ReservedHour:
    reservation_id: int
    hour: datetime
    tenant_id: Any  # a uuid, as asyncpg returns it
    model_id: int
    coverage: Coverage


async def computed(
    conn: asyncpg.Connection, start: datetime | None, end: datetime | None
) -> list[ReservedHour]:
    """Every reserved hour with usage started in ``[start, end)``, computed from its rows."""
    scopes: dict[tuple[int, datetime], tuple[Any, int, int]] = {}
    minutes: dict[tuple[int, datetime], list[MinuteUsage]] = {}
    for r in await conn.fetch(_MINUTES, start, end):
        at = (r["id"], r["hour"])
        scopes[at] = (r["tenant_id"], r["model_id"], r["tokens_per_minute"])
        minutes.setdefault(at, []).append(
            MinuteUsage(r["prompt_tokens"], r["completion_tokens"], r["cost"])
        )
    return [
        ReservedHour(ident, hour, tenant_id, model_id, cover_hour(minutes[(ident, hour)], tpm))
        for (ident, hour), (tenant_id, model_id, tpm) in scopes.items()
    ]


async def cover(conn: asyncpg.Connection, hour: datetime) -> None:
    """Replace ``hour``'s reserved hours by a recompute from its usage rows (in the caller's
    transaction: aggregation's, under the hour's lock); only changed rows are written."""
    hours = await computed(conn, hour, hour + timedelta(hours=1))
    # a reserved hour whose usage rows are gone is gone too
    await conn.execute(
        "DELETE FROM reserved_usage WHERE hour = $1 AND NOT (reservation_id = ANY($2::bigint[]))",
        hour,
        [h.reservation_id for h in hours],
    )
    await conn.executemany(
        _UPSERT,
        [
            (
                h.reservation_id,
                hour,
                h.tenant_id,
                h.model_id,
                *(getattr(h.coverage, f) for f in Coverage.__dataclass_fields__),
            )
            for h in hours
        ],
    )
