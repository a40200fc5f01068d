"""The Stripe export's PostgreSQL side: hourly totals beside what was exported of them,
the planned events, their attempts, and the advisory lock that lets one export run at a
time (the billing service's loop or ``crosslogic billing export``).

Callers wrap these in ``postgres_errors()``; the SQL here is the only SQL of the export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from crosslogic.billing.stripe_export import HourTotal, PlannedEvent, ReservationFee
from crosslogic.billing.stripe_meter import Answer

# pg_advisory_lock key of the export ("CLSE"): one exporter at a time, across processes
EXPORT_LOCK = 0x434C5345

_TOTALS = """
WITH totals AS (
    SELECT tenant_id, hour, model_id, prompt_tokens, completion_tokens
    FROM metered_hourly WHERE hour >= $1
), exported AS (
    SELECT tenant_id, hour, model_id,
           coalesce(sum(quantity) FILTER (WHERE meter = 'prompt_tokens'), 0)::bigint AS p,
           coalesce(sum(quantity) FILTER (WHERE meter = 'completion_tokens'), 0)::bigint AS c,
           coalesce(max(sequence) FILTER (WHERE meter = 'prompt_tokens') + 1, 0) AS p_next,
           coalesce(max(sequence) FILTER (WHERE meter = 'completion_tokens') + 1, 0) AS c_next
    FROM billing_events WHERE hour >= $1 GROUP BY tenant_id, hour, model_id
)
SELECT t.tenant_id::text AS tenant_id, tn.stripe_customer_id, t.hour, t.model_id,
       m.name AS model, t.prompt_tokens, t.completion_tokens,
       coalesce(e.p, 0) AS p, coalesce(e.c, 0) AS c,
       coalesce(e.p_next, 0) AS p_next, coalesce(e.c_next, 0) AS c_next
FROM totals t
JOIN tenants tn ON tn.id = t.tenant_id
JOIN models m ON m.id = t.model_id
LEFT JOIN exported e
       ON e.tenant_id = t.tenant_id AND e.hour = t.hour AND e.model_id = t.model_id
WHERE coalesce(tn.stripe_customer_id, '') <> ''
  AND (t.prompt_tokens <> coalesce(e.p, 0) OR t.completion_tokens <> coalesce(e.c, 0))
ORDER BY t.hour, t.tenant_id, t.model_id
"""


# $1: now. Started reservations of tenants with a Stripe customer whose fee is not planned.
_FEES = """
SELECT r.id AS reservation_id, r.tenant_id::text AS tenant_id, tn.stripe_customer_id,
       r.model_id, m.name AS model, r.starts_at, r.fee_usd
FROM reservations r
JOIN tenants tn ON tn.id = r.tenant_id
JOIN models m ON m.id = r.model_id
WHERE r.starts_at <= $1 AND coalesce(tn.stripe_customer_id, '') <> ''
  AND NOT EXISTS (SELECT 1 FROM billing_events b WHERE b.reservation_id = r.id)
ORDER BY r.starts_at, r.id
"""


@dataclass(frozen=True)
class FeeLine:
    """What a reservation's invoice item says besides its amount."""

    region: str | None
    tokens_per_minute: int
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class DueEvent:
    """A recorded event that is not in Stripe yet and whose next attempt is due."""

    id: int
    event_name: str
    identifier: str
    hour: datetime
    stripe_customer_id: str
    model: str
    meter: str
    quantity: int
    attempts: int
    amount_usd: Decimal | None = None
    reservation_id: int | None = None
    fee: FeeLine | None = None  # a reservation's fee, sent as an invoice item


async def try_lock(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", EXPORT_LOCK))


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", EXPORT_LOCK)


async def hour_totals(conn: asyncpg.Connection, *, since: datetime) -> list[HourTotal]:
    """Every (tenant with a Stripe customer, hour since ``since``, model) whose total
    differs from what was planned for export."""
    return [
        HourTotal(
            tenant_id=r["tenant_id"],
            stripe_customer_id=r["stripe_customer_id"],
            hour=r["hour"],
            model_id=r["model_id"],
            model=r["model"],
            tokens={
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
            },
            exported={"prompt_tokens": r["p"], "completion_tokens": r["c"]},
            next_sequence={"prompt_tokens": r["p_next"], "completion_tokens": r["c_next"]},
        )
        for r in await conn.fetch(_TOTALS, since)
    ]


async def reservation_fees(conn: asyncpg.Connection, *, now: datetime) -> list[ReservationFee]:
    return [ReservationFee(**dict(r)) for r in await conn.fetch(_FEES, now)]


async def record_planned(
    conn: asyncpg.Connection, events: Sequence[PlannedEvent], *, now: datetime
) -> None:
    await conn.executemany(
        "INSERT INTO billing_events (tenant_id, hour, model_id, meter, sequence, quantity, "
        "event_name, stripe_customer_id, idempotency_key, created_at, next_attempt_at, "
        "amount_usd, reservation_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12) "
        "ON CONFLICT (idempotency_key) DO NOTHING",
        [
            (
                e.tenant_id,
                e.hour,
                e.model_id,
                e.meter,
                e.sequence,
                e.quantity,
                e.event_name,
                e.stripe_customer_id,
                e.identifier,
                now,
                e.amount_usd,
                e.reservation_id,
            )
            for e in events
        ],
    )


async def due_events(conn: asyncpg.Connection, *, now: datetime, limit: int) -> list[DueEvent]:
    rows = await conn.fetch(
        "SELECT b.id, b.event_name, b.idempotency_key AS identifier, b.hour, "
        "b.stripe_customer_id, m.name AS model, b.meter, b.quantity, b.attempts, b.amount_usd, "
        "b.reservation_id, r.region_code, r.tokens_per_minute, r.starts_at, r.ends_at "
        "FROM billing_events b JOIN models m ON m.id = b.model_id "
        "LEFT JOIN reservations r ON r.id = b.reservation_id "
        "WHERE b.status <> 'sent' AND b.next_attempt_at <= $1 "
        "ORDER BY b.hour, b.id LIMIT $2",
        now,
        limit,
    )
    fee = ("region_code", "tokens_per_minute", "starts_at", "ends_at")
    return [
        DueEvent(
            **{k: v for k, v in r.items() if k not in fee},
            fee=None
            if r["reservation_id"] is None
            else FeeLine(r["region_code"], r["tokens_per_minute"], r["starts_at"], r["ends_at"]),
        )
        for r in rows
    ]


async def record_attempt(
    conn: asyncpg.Connection,
    event: DueEvent,
    answer: Answer,
    *,
    now: datetime,
    next_attempt_at: datetime,
) -> None:
    """The event's new state and its attempt row, in one transaction."""
    outcome = "sent" if answer.sent else "failed"
    response = None if answer.response is None else json.dumps(answer.response)
    async with conn.transaction():
        await conn.execute(
            "UPDATE billing_events SET status = $2::text, attempts = attempts + 1, "
            "last_error = $3, last_response = $4::jsonb, "
            "stripe_event_id = CASE WHEN $2::text = 'sent' THEN idempotency_key END, "
            "sent_at = CASE WHEN $2::text = 'sent' THEN $5::timestamptz END, "
            "next_attempt_at = $6 WHERE id = $1",
            event.id,
            outcome,
            answer.error,
            response,
            now,
            next_attempt_at,
        )
        await conn.execute(
            "INSERT INTO billing_event_attempts "
            "(event_id, attempt, at, outcome, http_status, response, error) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
            event.id,
            event.attempts + 1,
            now,
            outcome,
            answer.http_status,
            response,
            answer.error,
        )


async def oldest_unexported(conn: asyncpg.Connection) -> datetime | None:
    """The oldest hour with an event not in Stripe yet (None: everything planned is sent)."""
    hour: datetime | None = await conn.fetchval(
        "SELECT min(hour) FROM billing_events WHERE status <> 'sent'"
    )
    return hour
