"""Models in PostgreSQL: create (with a first list price), list, update, deprecate.

Only active models are served: a deprecated one leaves ``/v1/models``, ext_authz's catalog
(its requests are refused as ``model_not_found`` within ext_authz's refresh) and, announced
on ``channels.NODES``, the xDS snapshot. A model's ``lb_strategy`` (how its requests are
spread over its nodes: ``crosslogic.xds.clusters``) is changed live the same way.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.catalog import store
from crosslogic.catalog.money import plain_row
from crosslogic.catalog.requests import ModelCreate, ModelUpdate
from crosslogic.contracts import channels
from crosslogic.errors import Conflict

# a model with the list price in force now (null before its first version applies)
_MODEL = """
SELECT m.id, m.name, m.family, m.context_length, m.status, m.lb_strategy, m.created_at,
       m.updated_at,
       p.id AS price_id, p.prompt_per_mtok, p.completion_per_mtok, p.embedding_per_mtok,
       p.effective_at AS price_effective_at
FROM models m
LEFT JOIN LATERAL (
    SELECT * FROM model_prices WHERE model_id = m.id AND effective_at <= now()
    ORDER BY effective_at DESC LIMIT 1
) p ON true
"""


async def get(conn: asyncpg.Connection, model: str) -> dict[str, Any]:
    ident = await store.model_id(conn, model)
    return plain_row(await conn.fetchrow(f"{_MODEL} WHERE m.id = $1", ident))


async def list_all(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [plain_row(r) for r in await conn.fetch(f"{_MODEL} ORDER BY m.name")]


async def create(conn: asyncpg.Connection, *, actor: str, spec: ModelCreate) -> dict[str, Any]:
    """A new model; its first price version (in force since the epoch: the trigger of
    migration 0007) carries ``spec.rates``, or zero prices."""
    rates = spec.rates
    ident = await conn.fetchval(
        "INSERT INTO models (name, family, context_length, input_price_per_mtok, "
        "output_price_per_mtok, lb_strategy) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (name) DO NOTHING RETURNING id",
        spec.name,
        spec.family,
        spec.context_length,
        0 if rates is None else rates.prompt,
        0 if rates is None else rates.completion,
        spec.lb_strategy,
    )
    if ident is None:
        raise Conflict(f"A model named '{spec.name}' exists.", code="model_exists", param="name")
    if rates is not None:
        await conn.execute(
            "UPDATE model_prices SET embedding_per_mtok = $2 WHERE model_id = $1",
            ident,
            rates.embedding,
        )
    after = await get(conn, str(ident))
    await store.changed(
        conn,
        actor=actor,
        action="model.create",
        entity="model",
        entity_id=str(ident),
        before=None,
        after=after,
    )
    return after


async def update(
    conn: asyncpg.Connection, *, actor: str, model: str, change: ModelUpdate
) -> dict[str, Any]:
    """Set the status (``deprecated`` leaves /v1/models), the context length and/or the
    scheduling strategy."""
    ident = await store.model_id(conn, model)
    await conn.execute("SELECT 1 FROM models WHERE id = $1 FOR UPDATE", ident)
    before = await get(conn, str(ident))
    await conn.execute(
        "UPDATE models SET status = coalesce($2, status), "
        "context_length = coalesce($3, context_length), "
        "lb_strategy = coalesce($4, lb_strategy), updated_at = now() WHERE id = $1",
        ident,
        change.status,
        change.context_length,
        change.lb_strategy,
    )
    after = await get(conn, str(ident))
    if (after["status"], after["lb_strategy"]) != (before["status"], before["lb_strategy"]):
        # xDS serves only active models' clusters, each shaped by its strategy (ext_authz
        # re-reads its catalog on its own)
        await conn.execute("SELECT pg_notify($1, '')", channels.NODES)
    action = "model.deprecate" if change.status == "deprecated" else "model.update"
    await store.changed(
        conn,
        actor=actor,
        action=action,
        entity="model",
        entity_id=str(ident),
        before=before,
        after=after,
    )
    return after
