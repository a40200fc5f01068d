"""What the catalog's operations share: a model named by id or name, the audited write, and
the announcement billing reloads its price book on."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.contracts import channels
from crosslogic.errors import NotFound

_MAX_INT = 2**31 - 1


async def model_id(conn: asyncpg.Connection, model: str, *, param: str | None = None) -> int:
    """The id of the model named ``model`` (or whose id it is); NotFound otherwise."""
    found = await conn.fetchval("SELECT id FROM models WHERE name = $1", model)
    if found is None and model.isascii() and model.isdigit() and 0 < int(model) <= _MAX_INT:
        found = await conn.fetchval("SELECT id FROM models WHERE id = $1", int(model))
    if found is None:
        raise NotFound("model", model, param=param)
    return int(found)


async def changed(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Audit a catalog change and announce it to billing, both in the caller's transaction
    (the notification is delivered only if it commits)."""
    await audit.record(
        conn,
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        before=before,
        after=after,
    )
    await conn.execute(
        "SELECT pg_notify($1, $2)",
        channels.PRICES,
        json.dumps({"entity": entity, "id": entity_id}),
    )
