"""Tenants in PostgreSQL: create (audited), look up, list, suspend and activate."""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.accounts import records
from crosslogic.accounts.records import TENANT
from crosslogic.db.rows import as_dict
from crosslogic.errors import Conflict


async def create(conn: asyncpg.Connection, *, actor: str, name: str, plan: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"INSERT INTO tenants (name, plan) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
        f"RETURNING {TENANT}",
        name,
        plan,
    )
    if row is None:
        raise Conflict(f"A tenant named '{name}' exists.", code="tenant_exists", param="name")
    tenant = as_dict(row)
    return await records.created(
        conn, actor=actor, entity="tenant", entity_id=tenant["id"], row=tenant
    )


async def ensure(conn: asyncpg.Connection, *, actor: str, name: str) -> dict[str, Any]:
    """The tenant named ``name``, created (and audited) if there is none."""
    row = await conn.fetchrow(f"SELECT {TENANT} FROM tenants WHERE name = $1", name)
    if row is not None:
        return as_dict(row)
    return await create(conn, actor=actor, name=name, plan="default")


async def get(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    return await records.get(conn, "tenant", tenant_id)


async def list_all(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [as_dict(r) for r in await conn.fetch(f"SELECT {TENANT} FROM tenants ORDER BY name")]


async def set_status(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, status: str
) -> dict[str, Any]:
    return await records.set_status(
        conn, actor=actor, entity="tenant", ident=tenant_id, status=status
    )
