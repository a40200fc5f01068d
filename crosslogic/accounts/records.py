"""What tenants, environments and API keys share in PostgreSQL: their columns, lookups by
id, and the audited, announced writes.

Every write runs in the caller's transaction together with its audit row and, for a change
ext_authz caches, a NOTIFY on ``crosslogic_keys``: every ext_authz process LISTENs there and
drops what it cached about the changed key, environment or tenant, so a revoke or suspension
takes effect everywhere within milliseconds. Raising (any DomainError) rolls all of it back,
and the notification is delivered only if the transaction commits.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.contracts import channels
from crosslogic.db.rows import as_dict
from crosslogic.errors import NotFound

TENANT = "id::text, name, status, plan, created_at, updated_at"
ENVIRONMENT = "id::text, tenant_id::text, name, status, created_at, updated_at"
KEY = (
    "id::text AS api_key_id, key_id, tenant_id::text, environment_id::text, name, status, "
    "allowed_models, allowed_regions, default_region, rate_limit_rpm, expires_at, revoked_at, "
    "last_used_at, "
    "rotated_from::text, rotated_at, grace_ends_at, created_at, updated_at"
)
_TABLES = {"tenant": ("tenants", TENANT), "environment": ("environments", ENVIRONMENT)}


def is_uuid(ident: str) -> bool:
    try:
        uuid.UUID(ident)
        return True
    except ValueError:
        return False


async def get(conn: asyncpg.Connection, entity: str, ident: str) -> dict[str, Any]:
    """The tenant or environment ``ident``; NotFound also for what is not even a uuid."""
    table, columns = _TABLES[entity]
    row = (
        await conn.fetchrow(f"SELECT {columns} FROM {table} WHERE id = $1", ident)
        if is_uuid(ident)
        else None
    )
    if row is None:
        raise NotFound(entity, ident)
    return as_dict(row)


async def announce(conn: asyncpg.Connection, kind: str, ident: str) -> None:
    """Tell every ext_authz process (at commit) to forget what it cached under ``ident``."""
    await conn.execute(
        "SELECT pg_notify($1, $2)", channels.KEYS, json.dumps({"kind": kind, "id": ident})
    )


async def created(
    conn: asyncpg.Connection, *, actor: str, entity: str, entity_id: str, row: dict[str, Any]
) -> dict[str, Any]:
    """Audit the creation of ``row``; returns it."""
    await audit.record(
        conn,
        actor=actor,
        action=f"{entity}.create",
        entity=entity,
        entity_id=entity_id,
        before=None,
        after=row,
    )
    return row


async def set_status(
    conn: asyncpg.Connection, *, actor: str, entity: str, ident: str, status: str
) -> dict[str, Any]:
    """Suspend/activate a tenant or disable/enable an environment: audited, and announced so
    every ext_authz process drops the keys it cached under it."""
    before = await get(conn, entity, ident)
    table, columns = _TABLES[entity]
    after = as_dict(
        await conn.fetchrow(
            f"UPDATE {table} SET status = $2, updated_at = now() WHERE id = $1 RETURNING {columns}",
            before["id"],
            status,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action=f"{entity}.{status}",
        entity=entity,
        entity_id=before["id"],
        before=before,
        after=after,
    )
    await announce(conn, entity, before["id"])
    return after
