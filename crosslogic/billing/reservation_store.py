"""Reserved capacity in PostgreSQL: reservations (create, list, show, cancel; audited).
Each reserved hour's coverage is :mod:`crosslogic.billing.reserved_hours`.

A reservation is sold ahead: its period starts at a whole UTC hour that is not past yet, so
no usage already aggregated or exported changes its price. Only a postpaid tenant can hold
one (its fee is invoiced); two reservations of one tenant and model never overlap. One that
has not started can be cancelled (it is deleted, its fee never due); one that has, cannot.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.accounts.records import get as get_record
from crosslogic.billing import quota, quota_store
from crosslogic.billing.reservations import ReservationSpec
from crosslogic.catalog import store as catalog
from crosslogic.catalog.money import plain_row
from crosslogic.errors import Conflict, Invalid, NotFound

_COLUMNS = (
    "r.id, r.tenant_id::text AS tenant_id, m.name AS model, r.region_code AS region, "
    "r.tokens_per_minute, r.starts_at, r.ends_at, r.fee_usd, r.note, r.actor, r.created_at"
)
# a reservation with its usage so far (reserved hours aggregated)
_SHOW = f"""
SELECT {_COLUMNS},
       coalesce(sum(u.used_prompt_tokens + u.used_completion_tokens), 0)::bigint AS used_tokens,
       coalesce(sum(u.covered_prompt_tokens + u.covered_completion_tokens), 0)::bigint
           AS covered_tokens,
       coalesce(sum(u.used_cost_usd), 0) AS used_cost_usd,
       coalesce(sum(u.covered_cost_usd), 0) AS covered_cost_usd,
       coalesce(sum(u.minutes_over), 0)::bigint AS minutes_over
FROM reservations r JOIN models m ON m.id = r.model_id
LEFT JOIN reserved_usage u ON u.reservation_id = r.id
"""
_GROUP = " GROUP BY r.id, m.name"


def _out(row: asyncpg.Record) -> dict[str, Any]:
    out = plain_row(row)
    if "used_tokens" in out:
        out["overage_tokens"] = out["used_tokens"] - out["covered_tokens"]
        out["overage_cost_usd"] = str(row["used_cost_usd"] - row["covered_cost_usd"])
    return out


async def create(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, spec: ReservationSpec
) -> dict[str, Any]:
    tenant = await get_record(conn, "tenant", tenant_id)
    now = await conn.fetchval("SELECT now()")
    if spec.starts_at < now:
        raise Invalid(
            "'starts_at' is past: reserved capacity is sold ahead, from a coming hour on.",
            param="starts_at",
        )
    # the tenant's row lock serialises its reservations (the overlap check below)
    account, _ = await quota_store.load_account(conn, tenant["id"], now=now, lock=True)
    if account.mode != quota.POSTPAID:
        raise Conflict(
            "Reserved capacity is invoiced: the tenant must be postpaid (a Stripe customer or "
            "billing_mode postpaid)."
        )
    model_id = await catalog.model_id(conn, spec.model, param="model")
    if spec.region is not None and not await conn.fetchval(
        "SELECT true FROM regions WHERE code = $1", spec.region
    ):
        raise NotFound("region", spec.region[:64], param="region")
    clash = await conn.fetchval(
        "SELECT id FROM reservations WHERE tenant_id = $1 AND model_id = $2 "
        "AND starts_at < $4 AND ends_at > $3 LIMIT 1",
        tenant["id"],
        model_id,
        spec.starts_at,
        spec.ends_at,
    )
    if clash is not None:
        raise Conflict(
            f"The tenant's reservation {clash} of this model overlaps that period; "
            "reservations of one model must not overlap."
        )
    ident = await conn.fetchval(
        "INSERT INTO reservations (tenant_id, model_id, region_code, tokens_per_minute, "
        "starts_at, ends_at, fee_usd, note, actor) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        tenant["id"],
        model_id,
        spec.region,
        spec.tokens_per_minute,
        spec.starts_at,
        spec.ends_at,
        spec.fee_usd,
        spec.note,
        actor,
    )
    row = await show(conn, str(ident))
    await audit.record(
        conn,
        actor=actor,
        action="reservation.create",
        entity="reservation",
        entity_id=str(ident),
        before=None,
        after=row,
    )
    return row


async def show(conn: asyncpg.Connection, reservation_id: str) -> dict[str, Any]:
    row = (
        await conn.fetchrow(f"{_SHOW} WHERE r.id = $1 {_GROUP}", int(reservation_id))
        # isascii: str.isdigit() also holds for digits int() cannot read, like '²'
        if reservation_id.isascii() and reservation_id.isdigit() and len(reservation_id) < 19
        else None
    )
    if row is None:
        raise NotFound("reservation", reservation_id)
    return _out(row)


async def list_for(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    tenant = await get_record(conn, "tenant", tenant_id)
    rows = await conn.fetch(
        f"{_SHOW} WHERE r.tenant_id = $1 {_GROUP} ORDER BY r.starts_at, r.id", tenant["id"]
    )
    return [_out(r) for r in rows]


async def cancel(conn: asyncpg.Connection, *, actor: str, reservation_id: str) -> dict[str, Any]:
    """Delete a reservation that has not started (Conflict once it has)."""
    row = await show(conn, reservation_id)
    started = await conn.fetchval(
        "SELECT starts_at <= now() FROM reservations WHERE id = $1 FOR UPDATE", row["id"]
    )
    if started:
        raise Conflict(
            f"Reservation {row['id']} has started: its fee is due and it cannot be cancelled."
        )
    await conn.execute("DELETE FROM reservations WHERE id = $1", row["id"])
    await audit.record(
        conn,
        actor=actor,
        action="reservation.cancel",
        entity="reservation",
        entity_id=str(row["id"]),
        before=row,
        after=None,
    )
    return row
