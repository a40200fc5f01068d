"""A tenant's environments in PostgreSQL: create (audited), look up, list, disable, enable."""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.accounts import records, tenants
from crosslogic.accounts.records import ENVIRONMENT
from crosslogic.db.rows import as_dict
from crosslogic.errors import Conflict


async def create(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, name: str
) -> dict[str, Any]:
    await tenants.get(conn, tenant_id)  # NotFound before a foreign-key error
    row = await conn.fetchrow(
        "INSERT INTO environments (tenant_id, name) VALUES ($1, $2) "
        f"ON CONFLICT (tenant_id, name) DO NOTHING RETURNING {ENVIRONMENT}",
        tenant_id,
        name,
    )
    if row is None:
        raise Conflict(
            f"Tenant already has an environment '{name}'.", code="environment_exists", param="name"
        )
    environment = as_dict(row)
    return await records.created(
        conn, actor=actor, entity="environment", entity_id=environment["id"], row=environment
    )


async def ensure(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, name: str
) -> dict[str, Any]:
    """The tenant's environment named ``name``, created (and audited) if there is none."""
    row = await conn.fetchrow(
        f"SELECT {ENVIRONMENT} FROM environments WHERE tenant_id = $1 AND name = $2",
        tenant_id,
        name,
    )
    if row is not None:
        return as_dict(row)
    return await create(conn, actor=actor, tenant_id=tenant_id, name=name)


async def get(conn: asyncpg.Connection, environment_id: str) -> dict[str, Any]:
    return await records.get(conn, "environment", environment_id)


async def of_tenant(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    """The environments of ``tenant_id``, which must exist (as in the API: NotFound)."""
    tenant = await tenants.get(conn, tenant_id)
    rows = await conn.fetch(
        f"SELECT {ENVIRONMENT} FROM environments WHERE tenant_id = $1 ORDER BY name", tenant["id"]
    )
    return [as_dict(r) for r in rows]


async def set_status(
    conn: asyncpg.Connection, *, actor: str, environment_id: str, status: str
) -> dict[str, Any]:
    return await records.set_status(
        conn, actor=actor, entity="environment", ident=environment_id, status=status
    )
