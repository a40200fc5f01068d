"""Which Stripe customer a tenant is billed as (``tenants.stripe_customer_id``): the
validation of a change (pure) and the audited write. A tenant without one is not exported."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.accounts import tenants
from crosslogic.accounts.requests import json_object
from crosslogic.db.rows import as_dict
from crosslogic.errors import Conflict, Invalid

_CUSTOMER = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")
_COLUMNS = "id::text AS tenant_id, name, stripe_customer_id, updated_at"


def customer_change(body: Any) -> str | None:
    """``{"stripe_customer_id": "cus_..."}`` maps the tenant, ``null`` unmaps it."""
    fields = json_object(body, {"stripe_customer_id"})
    if "stripe_customer_id" not in fields:
        raise Invalid("'stripe_customer_id' is required (null unmaps).", param="stripe_customer_id")
    value = fields["stripe_customer_id"]
    if value is None:
        return None
    if not isinstance(value, str) or not _CUSTOMER.fullmatch(value):
        raise Invalid(
            "'stripe_customer_id' must be a Stripe customer id (cus_ and letters or digits) "
            "or null.",
            param="stripe_customer_id",
        )
    return value


async def get(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    known = await tenants.get(conn, tenant_id)  # NotFound for an unknown (or non-uuid) id
    return as_dict(
        await conn.fetchrow(f"SELECT {_COLUMNS} FROM tenants WHERE id = $1", known["id"])
    )


async def set_customer(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, stripe_customer_id: str | None
) -> dict[str, Any]:
    """Map (or unmap) the tenant's Stripe customer; audited. Events already recorded keep
    the customer they were planned for."""
    before = await get(conn, tenant_id)
    if stripe_customer_id is not None:
        holder = await conn.fetchval(
            "SELECT id::text FROM tenants WHERE stripe_customer_id = $1 AND id <> $2",
            stripe_customer_id,
            before["tenant_id"],
        )
        if holder is not None:
            raise Conflict(
                f"Stripe customer '{stripe_customer_id}' belongs to tenant {holder}.",
                code="stripe_customer_taken",
                param="stripe_customer_id",
            )
    after = as_dict(
        await conn.fetchrow(
            f"UPDATE tenants SET stripe_customer_id = $2, updated_at = now() WHERE id = $1 "
            f"RETURNING {_COLUMNS}",
            before["tenant_id"],
            stripe_customer_id,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action="tenant.stripe_customer",
        entity="tenant",
        entity_id=before["tenant_id"],
        before=before,
        after=after,
    )
    return after
