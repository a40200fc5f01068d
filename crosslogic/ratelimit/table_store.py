"""The ``rate_limits`` table in PostgreSQL: what the rate-limit service loads, and the
operator's audited changes to it (from the admin API and ``crosslogic limits``).

Each change runs in the caller's transaction together with its audit row and a NOTIFY on
``crosslogic_limits``; every rate-limit process LISTENs there and reloads its table, so a
change applies everywhere within milliseconds of the commit (and never if it rolls back).

A limit's subject is stored as the database id (the api_keys, tenants or environments uuid)
because that is what ext_authz attributes a request to; the operator may name a key by its
public ``key_id`` instead, and it is translated here.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.contracts import channels
from crosslogic.db.rows import as_dict
from crosslogic.errors import Invalid, NotFound
from crosslogic.ratelimit.config import FIELDS, SCOPES, LimitRow, row_from_record

_LIMIT = (
    "id, scope, subject, layer, requests_per_second, requests_per_minute, tokens_per_minute, "
    "tokens_per_day, fail_mode, created_at, updated_at"
)
# global first, then the plan defaults, then the overrides from the widest to the narrowest
_ORDER = (
    "array_position(ARRAY['global', 'plan', 'tenant', 'environment', 'key'], scope), subject, layer"
)
_MAX_ID = 2**63 - 1  # bigint


def _uuid(ident: str) -> str | None:
    """The canonical text of a UUID, or None if ``ident`` is not one."""
    try:
        return str(uuid.UUID(ident))
    except ValueError:
        return None


def entity_id(row: LimitRow | dict[str, Any]) -> str:
    """The audit log's ``entity_id`` of a limit: ``scope:subject:layer``."""
    if isinstance(row, LimitRow):
        return f"{row.scope}:{row.subject}:{row.layer}"
    return f"{row['scope']}:{row['subject']}:{row['layer']}"


# -- pure checks shared by the admin API and the command line ----------------------------


def scope_filter(value: str | None) -> str | None:
    """The ``scope`` of a listing: absent or empty for every scope, else one of SCOPES."""
    if not value:
        return None
    if value not in SCOPES:
        raise Invalid(f"'scope' must be one of {', '.join(SCOPES)}.", param="scope")
    return value


def limit_id_of(text: str) -> int:
    """A limit's id from a path or an argument; anything but a bigint is simply not found."""
    if text.isascii() and text.isdigit() and 0 < int(text) <= _MAX_ID:
        return int(text)
    raise NotFound("rate_limit", text)


# -- operations --------------------------------------------------------------------------


async def _subject_id(conn: asyncpg.Connection, *, scope: str, subject: str) -> str | None:
    """The stored form of an operator-given subject, or None if there is no such subject."""
    if scope in ("global", "plan"):
        return subject
    if scope == "key":
        by_public = await conn.fetchval("SELECT id::text FROM api_keys WHERE key_id = $1", subject)
        if by_public is not None:
            return str(by_public)
    table = {"tenant": "tenants", "environment": "environments", "key": "api_keys"}[scope]
    canonical = _uuid(subject)
    if canonical is None:
        return None
    found = await conn.fetchval(f"SELECT id::text FROM {table} WHERE id = $1", canonical)
    return None if found is None else str(found)


async def _notify(conn: asyncpg.Connection, op: str, row: dict[str, Any]) -> None:
    payload = {"op": op, "id": row["id"], **{k: row[k] for k in ("scope", "subject", "layer")}}
    await conn.execute("SELECT pg_notify($1, $2)", channels.LIMITS, json.dumps(payload))


async def set_limit(conn: asyncpg.Connection, *, actor: str, row: LimitRow) -> dict[str, Any]:
    """Create or replace the limit of (scope, subject, layer); fields not given become null."""
    subject = await _subject_id(conn, scope=row.scope, subject=row.subject)
    if subject is None:
        raise NotFound(row.scope, row.subject, code="subject_not_found", param="subject")
    values = [getattr(row, field) for field in FIELDS]
    before = await conn.fetchrow(
        f"SELECT {_LIMIT} FROM rate_limits WHERE scope = $1 AND subject = $2 AND layer = $3 "
        "FOR UPDATE",
        row.scope,
        subject,
        row.layer,
    )
    after = as_dict(
        await conn.fetchrow(
            f"""
        INSERT INTO rate_limits (scope, subject, layer, requests_per_second, requests_per_minute,
                                 tokens_per_minute, tokens_per_day, fail_mode)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (scope, subject, layer) DO UPDATE SET
            requests_per_second = EXCLUDED.requests_per_second,
            requests_per_minute = EXCLUDED.requests_per_minute,
            tokens_per_minute = EXCLUDED.tokens_per_minute,
            tokens_per_day = EXCLUDED.tokens_per_day,
            fail_mode = EXCLUDED.fail_mode,
            updated_at = now()
        RETURNING {_LIMIT}
        """,
            row.scope,
            subject,
            row.layer,
            *values,
            row.fail_mode,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action="rate_limit.create" if before is None else "rate_limit.update",
        entity="rate_limit",
        entity_id=entity_id(after),
        before=None if before is None else as_dict(before),
        after=after,
    )
    await _notify(conn, "set", after)
    return after


async def delete_limit(conn: asyncpg.Connection, *, actor: str, limit_id: int) -> dict[str, Any]:
    """Remove a limit; the layer falls back to the plan default (or to no limit)."""
    before = await conn.fetchrow(
        f"DELETE FROM rate_limits WHERE id = $1 RETURNING {_LIMIT}", limit_id
    )
    if before is None:
        raise NotFound("rate_limit", str(limit_id))
    row = as_dict(before)
    await audit.record(
        conn,
        actor=actor,
        action="rate_limit.delete",
        entity="rate_limit",
        entity_id=entity_id(row),
        before=row,
        after=None,
    )
    await _notify(conn, "delete", row)
    return row


async def list_limits(
    conn: asyncpg.Connection, *, scope: str | None = None, subject: str | None = None
) -> list[dict[str, Any]]:
    """Limits, optionally of one scope and/or subject (a key may be named by its key_id)."""
    aliases: list[str] = []
    if subject is not None and "\x00" in subject:
        return []  # names nothing (and PostgreSQL text cannot hold it)
    if subject is not None:
        aliases = [subject]
        canonical = _uuid(subject)
        if canonical is not None:
            aliases.append(canonical)
        key = await conn.fetchval("SELECT id::text FROM api_keys WHERE key_id = $1", subject)
        if key is not None:
            aliases.append(str(key))
    rows = await conn.fetch(
        f"SELECT {_LIMIT} FROM rate_limits WHERE ($1::text IS NULL OR scope = $1) "
        f"AND ($2::boolean OR subject = ANY($3::text[])) ORDER BY {_ORDER}",
        scope,
        subject is None,
        aliases,
    )
    return [as_dict(r) for r in rows]


async def load_rows(source: asyncpg.Pool | asyncpg.Connection) -> list[LimitRow]:
    """Every configured limit, for the rate-limit service's :class:`LimitTable`."""
    records = await source.fetch(f"SELECT {_LIMIT} FROM rate_limits ORDER BY {_ORDER}")
    return [row_from_record(r) for r in records]
