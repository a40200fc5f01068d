"""Regions in PostgreSQL: create, list, update (name, price multiplier).

A multiplier is not versioned: a change applies to usage billed after it, and each usage row
keeps the multiplier it was priced with (``usage_records.price_multiplier``).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.catalog import store
from crosslogic.catalog.money import plain_row
from crosslogic.catalog.requests import RegionCreate, RegionUpdate
from crosslogic.errors import Conflict, NotFound

_REGION = "code, name, provider, price_multiplier, created_at"


async def get(conn: asyncpg.Connection, code: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {_REGION} FROM regions WHERE code = $1", code)
    if row is None:
        raise NotFound("region", code)
    return plain_row(row)


async def list_all(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [plain_row(r) for r in await conn.fetch(f"SELECT {_REGION} FROM regions ORDER BY code")]


async def create(conn: asyncpg.Connection, *, actor: str, spec: RegionCreate) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"INSERT INTO regions (code, name, provider, price_multiplier) VALUES ($1, $2, $3, $4) "
        f"ON CONFLICT (code) DO NOTHING RETURNING {_REGION}",
        spec.code,
        spec.name,
        spec.provider,
        spec.price_multiplier,
    )
    if row is None:
        raise Conflict(f"A region '{spec.code}' exists.", code="region_exists", param="code")
    after = plain_row(row)
    await store.changed(
        conn,
        actor=actor,
        action="region.create",
        entity="region",
        entity_id=spec.code,
        before=None,
        after=after,
    )
    return after


async def update(
    conn: asyncpg.Connection, *, actor: str, code: str, change: RegionUpdate
) -> dict[str, Any]:
    before = plain_row(
        await conn.fetchrow(f"SELECT {_REGION} FROM regions WHERE code = $1 FOR UPDATE", code)
    )
    if not before:
        raise NotFound("region", code)
    after = plain_row(
        await conn.fetchrow(
            "UPDATE regions SET name = coalesce($2, name), "
            "price_multiplier = coalesce($3, price_multiplier) WHERE code = $1 "
            f"RETURNING {_REGION}",
            code,
            change.name,
            change.price_multiplier,
        )
    )
    await store.changed(
        conn,
        actor=actor,
        action="region.update",
        entity="region",
        entity_id=code,
        before=before,
        after=after,
    )
    return after
