"""Prepaid credits: grants in a ledger (validation pure, operations audited) and the balance.

A grant adds ``amount_usd`` until ``expires_at`` (never, without one); a tenant's balance is
its unexpired grants minus its chargeable usage since the oldest of them (see
:mod:`crosslogic.billing.quota`). A grant recomputes the tenant's quota in its own
transaction, so a tenant refused for want of credits is served again as soon as it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.accounts.plans import usd
from crosslogic.accounts.records import get
from crosslogic.accounts.requests import json_object
from crosslogic.billing import quota_store
from crosslogic.db.rows import as_dict
from crosslogic.errors import Invalid
from crosslogic.times import parse_time

_GRANT = (
    "id, tenant_id::text, amount_usd::text, granted_at, expires_at, note, actor, "
    "(expires_at IS NULL OR expires_at > now()) AS live"
)


@dataclass(frozen=True)
class GrantSpec:
    amount_usd: Decimal
    expires_at: datetime | None = None
    note: str = ""


def grant_spec(body: Any, *, now: datetime) -> GrantSpec:
    """A credit grant: ``amount_usd`` required, ``expires_at`` (ISO 8601, in the future) and
    ``note`` optional."""
    body = json_object(body, {"amount_usd", "expires_at", "note"})
    if "amount_usd" not in body:
        raise Invalid("'amount_usd' is required.", param="amount_usd")
    amount = usd(body["amount_usd"], field="amount_usd")
    expires = body.get("expires_at")
    expires_at = None if expires is None else parse_time(expires, param="expires_at")
    if expires_at is not None and expires_at <= now:
        raise Invalid("'expires_at' must be in the future.", param="expires_at")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 500:
        raise Invalid("'note' must be a string of at most 500 characters.", param="note")
    return GrantSpec(amount_usd=amount, expires_at=expires_at, note=note)


async def grant(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, spec: GrantSpec
) -> dict[str, Any]:
    tenant = await get(conn, "tenant", tenant_id)
    row = as_dict(
        await conn.fetchrow(
            "INSERT INTO credit_grants (tenant_id, amount_usd, expires_at, note, actor) "
            f"VALUES ($1, $2, $3, $4, $5) RETURNING {_GRANT}",
            tenant["id"],
            spec.amount_usd,
            spec.expires_at,
            spec.note,
            actor,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action="credit_grant.create",
        entity="credit_grant",
        entity_id=str(row["id"]),
        before=None,
        after=row,
    )
    now = await conn.fetchval("SELECT now()")  # the grant's own granted_at
    await quota_store.recompute(conn, tenant["id"], now=now)
    return row


async def list_grants(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    tenant = await get(conn, "tenant", tenant_id)
    rows = await conn.fetch(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant_id = $1 ORDER BY granted_at, id",
        tenant["id"],
    )
    return [as_dict(r) for r in rows]


async def balance(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    tenant = await get(conn, "tenant", tenant_id)
    return await quota_store.state(conn, tenant["id"])
