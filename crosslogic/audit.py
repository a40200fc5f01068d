"""The audit log: one row per operator change, written in the change's own transaction.

Every audited write (tenants, environments, API keys, rate limits) records who did it
(``actor``: ``operator:<name>`` from the admin API, ``cli:<user>`` from the command line,
``system`` for what the stack seeds itself) and the entity before and after, so the row
commits or rolls back with the change it describes.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from crosslogic.db.rows import as_dict

SYSTEM = "system"  # the actor of changes the stack makes itself (the demo seeding)


async def record(
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


async def entries(
    conn: asyncpg.Connection, *, limit: int = 100, entity_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, optionally of one entity."""
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
