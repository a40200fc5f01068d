"""API keys in PostgreSQL: the one audited way to create a key, then rotate and revoke it.

A key is shown in plaintext once, in what :func:`create` (or :func:`rotate`) returns; only
its hash is stored. Every change is audited and announced to ext_authz (see ``records``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.accounts import environments, records, rotation
from crosslogic.accounts.records import KEY
from crosslogic.accounts.requests import KeySpec
from crosslogic.db.rows import as_dict
from crosslogic.errors import Invalid, NotFound
from crosslogic.extauthz import keys as secrets


async def _insert(
    conn: asyncpg.Connection,
    *,
    actor: str,
    tenant_id: str,
    environment_id: str,
    spec: KeySpec,
    rotated_from: str | None = None,
) -> dict[str, Any]:
    if spec.default_region is not None and not await conn.fetchval(
        "SELECT true FROM regions WHERE code = $1", spec.default_region
    ):
        raise Invalid(f"Unknown region '{spec.default_region}'.", param="default_region")
    new = secrets.generate()
    row = as_dict(
        await conn.fetchrow(
            f"""
        INSERT INTO api_keys (key_id, key_hash, tenant_id, environment_id, name, allowed_models,
                              allowed_regions, rate_limit_rpm, expires_at, rotated_from,
                              default_region)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {KEY}
        """,
            new.key_id,
            new.key_hash,
            tenant_id,
            environment_id,
            spec.name,
            spec.allowed_models,
            spec.allowed_regions,
            spec.rate_limit_rpm,
            spec.expires_at,
            rotated_from,
            spec.default_region,
        )
    )
    await records.created(conn, actor=actor, entity="api_key", entity_id=row["key_id"], row=row)
    return {**row, "key": new.plaintext}


async def create(
    conn: asyncpg.Connection, *, actor: str, environment_id: str, spec: KeySpec
) -> dict[str, Any]:
    """The new key's row plus ``key``, the plaintext: shown this once, stored only hashed."""
    environment = await environments.get(conn, environment_id)
    return await _insert(
        conn,
        actor=actor,
        tenant_id=environment["tenant_id"],
        environment_id=environment["id"],
        spec=spec,
    )


async def list_some(
    conn: asyncpg.Connection, *, tenant_id: str | None = None, environment_id: str | None = None
) -> list[dict[str, Any]]:
    """Keys, optionally of one tenant and/or environment (none for an id that is no uuid)."""
    for ident in (tenant_id, environment_id):
        if ident is not None and not records.is_uuid(ident):
            return []
    rows = await conn.fetch(
        f"SELECT {KEY} FROM api_keys WHERE ($1::uuid IS NULL OR tenant_id = $1) "
        "AND ($2::uuid IS NULL OR environment_id = $2) ORDER BY created_at",
        tenant_id,
        environment_id,
    )
    return [as_dict(r) for r in rows]


async def get(conn: asyncpg.Connection, key_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {KEY} FROM api_keys WHERE key_id = $1", key_id)
    if row is None:
        raise NotFound("api_key", key_id)
    return as_dict(row)


async def _lock(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record:
    # FOR UPDATE: concurrent rotations (or a rotation and a revoke) of one key take turns,
    # and each sees what the other committed
    row = await conn.fetchrow(f"SELECT {KEY} FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id)
    if row is None:
        raise NotFound("api_key", key_id)
    return row


async def _update(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    before: dict[str, Any],
    sql: str,
    args: tuple[Any, ...],
) -> dict[str, Any]:
    """Change the key ``before`` with ``sql`` (its key_id is $1): audited and announced."""
    key_id = before["key_id"]
    after = as_dict(await conn.fetchrow(sql.format(columns=KEY), key_id, *args))
    await audit.record(
        conn,
        actor=actor,
        action=action,
        entity="api_key",
        entity_id=key_id,
        before=before,
        after=after,
    )
    await records.announce(conn, "key", before["api_key_id"])
    return after


async def rotate(
    conn: asyncpg.Connection,
    *,
    actor: str,
    key_id: str,
    grace_seconds: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A new key with the same settings and the old key's own expiry; the old one keeps
    working for ``grace_seconds`` (or until its own expiry, if sooner). See ``rotation``."""
    locked = await _lock(conn, key_id)
    now = now or datetime.now(UTC)
    successor = None
    if locked["rotated_at"] is not None:
        successor = await conn.fetchval(
            "SELECT key_id FROM api_keys WHERE rotated_from = $1 ORDER BY created_at LIMIT 1",
            locked["api_key_id"],
        )
    refused = rotation.refusal(locked, successor=successor, now=now)
    if refused is not None:
        raise refused
    old = as_dict(locked)
    spec = KeySpec(
        name=locked["name"],
        expires_at=locked["expires_at"],
        allowed_models=locked["allowed_models"],
        allowed_regions=locked["allowed_regions"],
        rate_limit_rpm=locked["rate_limit_rpm"],
        default_region=locked["default_region"],
    )
    new = await _insert(
        conn,
        actor=actor,
        tenant_id=old["tenant_id"],
        environment_id=old["environment_id"],
        spec=spec,
        rotated_from=old["api_key_id"],
    )
    grace_end = rotation.grace_end(
        expires_at=locked["expires_at"], now=now, grace_seconds=grace_seconds
    )
    old_after = await _update(
        conn,
        actor=actor,
        action="api_key.rotate",
        before=old,
        sql="UPDATE api_keys SET rotated_at = $2, grace_ends_at = $3, updated_at = now() "
        "WHERE key_id = $1 RETURNING {columns}",
        args=(now, grace_end),
    )
    return {"new": new, "old": old_after}


async def revoke(conn: asyncpg.Connection, *, actor: str, key_id: str) -> dict[str, Any]:
    """Immediate, also in a grace period (which it ends); a key's successor and predecessor
    are separate keys and are not touched."""
    before = as_dict(await _lock(conn, key_id))
    if before["status"] == "revoked":
        return before  # idempotent: revoking twice is not an error
    return await _update(
        conn,
        actor=actor,
        action="api_key.revoke",
        before=before,
        sql="UPDATE api_keys SET status = 'revoked', revoked_at = now(), updated_at = now() "
        "WHERE key_id = $1 RETURNING {columns}",
        args=(),
    )
