"""Operator operations on tenants, environments and keys, in PostgreSQL.

Each change runs in the caller's transaction together with its audit row and a NOTIFY on
``crosslogic_keys``; every ext_authz process LISTENs there and drops what it cached about the
changed key, environment or tenant, so a revoke or suspension takes effect everywhere within
milliseconds (the notification is delivered only if the transaction commits).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from crosslogic.accounts import rotation
from crosslogic.accounts.requests import KeySpec
from crosslogic.contracts import channels
from crosslogic.extauthz import keys
from crosslogic.openai_errors import ApiError

_TENANT = "id::text, name, status, plan, created_at, updated_at"
_ENVIRONMENT = "id::text, tenant_id::text, name, status, created_at, updated_at"
_KEY = (
    "id::text AS api_key_id, key_id, tenant_id::text, environment_id::text, name, status, "
    "allowed_models, allowed_regions, rate_limit_rpm, expires_at, revoked_at, last_used_at, "
    "rotated_from::text, rotated_at, grace_ends_at, created_at, updated_at"
)


Outcome = TypeVar("Outcome")


async def atomically(
    conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[Outcome]]
) -> Outcome:
    """Run ``work`` in one transaction that commits only if it succeeded: an exception or an
    ApiError result rolls everything back, audit row and NOTIFY included."""
    tx = conn.transaction()
    await tx.start()
    try:
        result = await work(conn)
    except BaseException:
        await tx.rollback()
        raise
    if isinstance(result, ApiError):
        await tx.rollback()
    else:
        await tx.commit()
    return result


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def as_dict(record: asyncpg.Record | None) -> dict[str, Any]:
    return {} if record is None else {k: _plain(v) for k, v in dict(record).items()}


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"No {what} '{ident}'.", "invalid_request_error", f"{what}_not_found")


def _uuid(ident: str) -> bool:
    try:
        uuid.UUID(ident)
        return True
    except ValueError:
        return False


async def write_audit(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity_type, entity_id, before, after) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb)",
        actor,
        action,
        entity,
        entity_id,
        None if before is None else json.dumps(before),
        None if after is None else json.dumps(after),
    )


async def _notify(conn: asyncpg.Connection, kind: str, ident: str) -> None:
    await conn.execute(
        "SELECT pg_notify($1, $2)", channels.KEYS, json.dumps({"kind": kind, "id": ident})
    )


_TABLES = {"tenant": ("tenants", _TENANT), "environment": ("environments", _ENVIRONMENT)}


async def _set_status(
    conn: asyncpg.Connection, *, actor: str, entity: str, before: dict[str, Any], status: str
) -> dict[str, Any]:
    """Suspend/activate a tenant or disable/enable an environment: audited, and announced so
    every ext_authz process drops the keys it cached under it."""
    table, columns = _TABLES[entity]
    after = as_dict(
        await conn.fetchrow(
            f"UPDATE {table} SET status = $2, updated_at = now() WHERE id = $1 RETURNING {columns}",
            before["id"],
            status,
        )
    )
    await write_audit(
        conn,
        actor=actor,
        action=f"{entity}.{status}",
        entity=entity,
        entity_id=before["id"],
        before=before,
        after=after,
    )
    await _notify(conn, entity, before["id"])
    return after


# -- tenants -----------------------------------------------------------------------------


async def create_tenant(
    conn: asyncpg.Connection, *, actor: str, name: str, plan: str
) -> dict[str, Any] | ApiError:
    try:
        row = as_dict(
            await conn.fetchrow(
                f"INSERT INTO tenants (name, plan) VALUES ($1, $2) RETURNING {_TENANT}", name, plan
            )
        )
    except asyncpg.UniqueViolationError:
        return ApiError(
            409,
            f"A tenant named '{name}' exists.",
            "invalid_request_error",
            "tenant_exists",
            "name",
        )
    await write_audit(
        conn,
        actor=actor,
        action="tenant.create",
        entity="tenant",
        entity_id=row["id"],
        before=None,
        after=row,
    )
    return row


async def list_tenants(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [as_dict(r) for r in await conn.fetch(f"SELECT {_TENANT} FROM tenants ORDER BY name")]


async def _get(conn: asyncpg.Connection, entity: str, ident: str) -> dict[str, Any] | ApiError:
    table, columns = _TABLES[entity]
    row = (
        await conn.fetchrow(f"SELECT {columns} FROM {table} WHERE id = $1", ident)
        if _uuid(ident)
        else None
    )
    return as_dict(row) if row is not None else _not_found(entity, ident)


async def get_tenant(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Any] | ApiError:
    return await _get(conn, "tenant", tenant_id)


async def set_tenant_status(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, status: str
) -> dict[str, Any] | ApiError:
    before = await get_tenant(conn, tenant_id)
    if isinstance(before, ApiError):
        return before
    return await _set_status(conn, actor=actor, entity="tenant", before=before, status=status)


# -- environments ------------------------------------------------------------------------


async def create_environment(
    conn: asyncpg.Connection, *, actor: str, tenant_id: str, name: str
) -> dict[str, Any] | ApiError:
    tenant = await get_tenant(conn, tenant_id)
    if isinstance(tenant, ApiError):
        return tenant
    try:
        row = as_dict(
            await conn.fetchrow(
                "INSERT INTO environments (tenant_id, name) VALUES ($1, $2) "
                f"RETURNING {_ENVIRONMENT}",
                tenant_id,
                name,
            )
        )
    except asyncpg.UniqueViolationError:
        return ApiError(
            409,
            f"Tenant already has an environment '{name}'.",
            "invalid_request_error",
            "environment_exists",
            "name",
        )
    await write_audit(
        conn,
        actor=actor,
        action="environment.create",
        entity="environment",
        entity_id=row["id"],
        before=None,
        after=row,
    )
    return row


async def list_environments(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    if not _uuid(tenant_id):
        return []
    rows = await conn.fetch(
        f"SELECT {_ENVIRONMENT} FROM environments WHERE tenant_id = $1 ORDER BY name", tenant_id
    )
    return [as_dict(r) for r in rows]


async def get_environment(
    conn: asyncpg.Connection, environment_id: str
) -> dict[str, Any] | ApiError:
    return await _get(conn, "environment", environment_id)


async def set_environment_status(
    conn: asyncpg.Connection, *, actor: str, environment_id: str, status: str
) -> dict[str, Any] | ApiError:
    before = await get_environment(conn, environment_id)
    if isinstance(before, ApiError):
        return before
    return await _set_status(conn, actor=actor, entity="environment", before=before, status=status)


# -- keys --------------------------------------------------------------------------------


async def _insert_key(
    conn: asyncpg.Connection,
    *,
    environment: dict[str, Any],
    spec: KeySpec,
    rotated_from: str | None = None,
) -> tuple[dict[str, Any], str]:
    new = keys.generate()
    row = as_dict(
        await conn.fetchrow(
            f"""
        INSERT INTO api_keys (key_id, key_hash, tenant_id, environment_id, name, allowed_models,
                              allowed_regions, rate_limit_rpm, expires_at, rotated_from)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_KEY}
        """,
            new.key_id,
            new.key_hash,
            environment["tenant_id"],
            environment["id"],
            spec.name,
            spec.allowed_models,
            spec.allowed_regions,
            spec.rate_limit_rpm,
            spec.expires_at,
            rotated_from,
        )
    )
    return row, new.plaintext


async def create_key(
    conn: asyncpg.Connection, *, actor: str, environment_id: str, spec: KeySpec
) -> dict[str, Any] | ApiError:
    """The new key's row plus ``key``, the plaintext: shown this once, stored only hashed."""
    environment = await get_environment(conn, environment_id)
    if isinstance(environment, ApiError):
        return environment
    row, plaintext = await _insert_key(conn, environment=environment, spec=spec)
    await write_audit(
        conn,
        actor=actor,
        action="api_key.create",
        entity="api_key",
        entity_id=row["key_id"],
        before=None,
        after=row,
    )
    return {**row, "key": plaintext}


async def list_keys(
    conn: asyncpg.Connection, *, tenant_id: str | None = None, environment_id: str | None = None
) -> list[dict[str, Any]]:
    for ident in (tenant_id, environment_id):
        if ident is not None and not _uuid(ident):
            return []
    rows = await conn.fetch(
        f"SELECT {_KEY} FROM api_keys WHERE ($1::uuid IS NULL OR tenant_id = $1) "
        "AND ($2::uuid IS NULL OR environment_id = $2) ORDER BY created_at",
        tenant_id,
        environment_id,
    )
    return [as_dict(r) for r in rows]


async def get_key(conn: asyncpg.Connection, key_id: str) -> dict[str, Any] | ApiError:
    row = await conn.fetchrow(f"SELECT {_KEY} FROM api_keys WHERE key_id = $1", key_id)
    return as_dict(row) if row is not None else _not_found("api_key", key_id)


async def _lock_key(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record | None:
    # FOR UPDATE: concurrent rotations (or a rotation and a revoke) of one key take turns,
    # and each sees what the other committed
    return await conn.fetchrow(f"SELECT {_KEY} FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id)


async def rotate_key(
    conn: asyncpg.Connection,
    *,
    actor: str,
    key_id: str,
    grace_seconds: int,
    now: datetime | None = None,
) -> dict[str, Any] | ApiError:
    """A new key with the same settings and the old key's own expiry; the old one keeps
    working for ``grace_seconds`` (or until its own expiry, if sooner). See ``rotation``."""
    locked = await _lock_key(conn, key_id)
    if locked is None:
        return _not_found("api_key", key_id)
    now = now or datetime.now(UTC)
    successor = None
    if locked["rotated_at"] is not None:
        successor = await conn.fetchval(
            "SELECT key_id FROM api_keys WHERE rotated_from = $1 ORDER BY created_at LIMIT 1",
            locked["api_key_id"],
        )
    refused = rotation.refusal(locked, successor=successor, now=now)
    if refused is not None:
        return refused
    old = as_dict(locked)
    spec = KeySpec(
        name=locked["name"],
        expires_at=locked["expires_at"],
        allowed_models=locked["allowed_models"],
        allowed_regions=locked["allowed_regions"],
        rate_limit_rpm=locked["rate_limit_rpm"],
    )
    environment = await get_environment(conn, old["environment_id"])
    assert not isinstance(environment, ApiError)  # the foreign key guarantees it
    new, plaintext = await _insert_key(
        conn, environment=environment, spec=spec, rotated_from=old["api_key_id"]
    )
    grace_end = rotation.grace_end(
        expires_at=locked["expires_at"], now=now, grace_seconds=grace_seconds
    )
    old_after = as_dict(
        await conn.fetchrow(
            f"UPDATE api_keys SET rotated_at = $2, grace_ends_at = $3, updated_at = now() "
            f"WHERE key_id = $1 RETURNING {_KEY}",
            key_id,
            now,
            grace_end,
        )
    )
    await write_audit(
        conn,
        actor=actor,
        action="api_key.rotate",
        entity="api_key",
        entity_id=key_id,
        before=old,
        after=old_after,
    )
    await write_audit(
        conn,
        actor=actor,
        action="api_key.create",
        entity="api_key",
        entity_id=new["key_id"],
        before=None,
        after=new,
    )
    await _notify(conn, "key", old["api_key_id"])
    return {"new": {**new, "key": plaintext}, "old": old_after}


async def revoke_key(
    conn: asyncpg.Connection, *, actor: str, key_id: str
) -> dict[str, Any] | ApiError:
    """Immediate, also in a grace period (which it ends); a key's successor and predecessor
    are separate keys and are not touched."""
    locked = await _lock_key(conn, key_id)
    if locked is None:
        return _not_found("api_key", key_id)
    before = as_dict(locked)
    if before["status"] == "revoked":
        return before  # idempotent: revoking twice is not an error
    after = as_dict(
        await conn.fetchrow(
            f"UPDATE api_keys SET status = 'revoked', revoked_at = now(), updated_at = now() "
            f"WHERE key_id = $1 RETURNING {_KEY}",
            key_id,
        )
    )
    await write_audit(
        conn,
        actor=actor,
        action="api_key.revoke",
        entity="api_key",
        entity_id=key_id,
        before=before,
        after=after,
    )
    await _notify(conn, "key", before["api_key_id"])
    return after


async def audit_entries(
    conn: asyncpg.Connection, *, limit: int = 100, entity_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, at, actor, action, entity_type, entity_id, before, after FROM audit_log "
        "WHERE ($2::text IS NULL OR entity_id = $2) ORDER BY id DESC LIMIT $1",
        limit,
        entity_id,
    )
    out = []
    for r in rows:
        entry = as_dict(r)
        for side in ("before", "after"):
            if entry[side] is not None:
                entry[side] = json.loads(entry[side])
        out.append(entry)
    return out
