"""Pools in PostgreSQL: created, listed, shown, updated and deleted by operators (the admin
API and ``crosslogic pools ...``), each change audited as entity ``pool`` in its own
transaction. A pool's answer carries the orchestrator's view beside the spec: the replicas
it aims at, the optimizer's estimate and the pool's launches.

Deleting a pool removes its row only: its launches stay until the orchestrator has torn
them down (they name a pool that is no longer declared).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from crosslogic import audit
from crosslogic.db.rows import as_dict
from crosslogic.errors import Conflict, Invalid, NotFound
from crosslogic.orchestrator.pools import PoolSpec, from_row, updated

ENTITY = "pool"
_SPEC = (
    "p.name, m.name AS model, p.region_code AS region, p.accelerator, p.gpu_count, p.clouds, "
    "p.cloud_regions, p.min_replicas, p.max_replicas, p.spot, p.on_demand_fallback, "
    "p.model_source, p.vllm_args, p.replica_tokens_per_minute, p.scale_up_cooldown_s, "
    "p.scale_down_cooldown_s"
)
POOL = (
    f"{_SPEC}, p.created_by, p.created_at, p.updated_at, p.target_replicas, p.last_scaled_at, "
    "p.estimate, p.observed_at"
)
FROM_POOLS = "FROM pools p JOIN models m ON m.id = p.model_id"
LAUNCH = (
    "id, pool_name AS pool, cluster_name, spec_hash, state, request_id, cost_per_hour::text "
    "AS cost_per_hour_usd, resources, reason, created_at, up_at, ended_at"
)
LIVE = ("launching", "up", "terminating")


def pool_out(row: asyncpg.Record) -> dict[str, Any]:
    pool = as_dict(row)
    for name in ("clouds", "cloud_regions", "vllm_args"):
        if pool[name] is not None:
            pool[name] = list(pool[name])
    if pool.get("estimate") is not None:
        pool["estimate"] = json.loads(pool["estimate"])
    return pool


def spec_of(pool: dict[str, Any]) -> PoolSpec:
    return from_row(pool)


async def _model_id(conn: asyncpg.Connection, spec: PoolSpec) -> int:
    model_id = await conn.fetchval("SELECT id FROM models WHERE name = $1", spec.model)
    if model_id is None:
        raise Invalid(f"Unknown model '{spec.model}'.", code="unknown_model", param="model")
    if spec.region is not None and not await conn.fetchval(
        "SELECT 1 FROM regions WHERE code = $1", spec.region
    ):
        raise Invalid(f"Unknown region '{spec.region}'.", code="unknown_region", param="region")
    return int(model_id)


def _values(spec: PoolSpec) -> list[Any]:
    return [
        spec.region,
        spec.accelerator,
        spec.gpu_count,
        None if spec.clouds is None else list(spec.clouds),
        None if spec.cloud_regions is None else list(spec.cloud_regions),
        spec.min_replicas,
        spec.max_replicas,
        spec.spot,
        spec.on_demand_fallback,
        spec.model_source,
        list(spec.vllm_args),
        spec.replica_tokens_per_minute,
        spec.scale_up_cooldown_s,
        spec.scale_down_cooldown_s,
    ]


_COLUMNS = (
    "region_code, accelerator, gpu_count, clouds, cloud_regions, min_replicas, max_replicas, "
    "spot, on_demand_fallback, model_source, vllm_args, replica_tokens_per_minute, "
    "scale_up_cooldown_s, scale_down_cooldown_s"
)


async def _fetch(conn: asyncpg.Connection, name: str, *, lock: bool = False) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {POOL} {FROM_POOLS} WHERE p.name = $1{' FOR UPDATE OF p' if lock else ''}", name
    )
    if row is None:
        raise NotFound("pool", name, code="pool_not_found")
    return pool_out(row)


async def create(conn: asyncpg.Connection, *, actor: str, spec: PoolSpec) -> dict[str, Any]:
    model_id = await _model_id(conn, spec)
    inserted = await conn.fetchval(
        f"INSERT INTO pools (name, model_id, {_COLUMNS}, created_by) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
        "ON CONFLICT (name) DO NOTHING RETURNING name",
        spec.name,
        model_id,
        *_values(spec),
        actor,
    )
    if inserted is None:
        raise Conflict(f"A pool named '{spec.name}' exists already.", code="pool_exists")
    created = await _fetch(conn, spec.name)
    await audit.record(
        conn,
        actor=actor,
        action="pool.create",
        entity=ENTITY,
        entity_id=spec.name,
        before=None,
        after=spec.as_json(),
    )
    return created


async def list_pools(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {POOL}, (SELECT count(*) FROM pool_launches l WHERE l.pool_name = p.name "
        "AND l.state = 'up') AS replicas_up, (SELECT count(*) FROM pool_launches l WHERE "
        "l.pool_name = p.name AND l.state = 'launching') AS replicas_launching "
        f"{FROM_POOLS} ORDER BY p.name"
    )
    return [pool_out(r) for r in rows]


async def launches(conn: asyncpg.Connection, pool: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {LAUNCH} FROM pool_launches WHERE pool_name = $1 AND "
        "(state = ANY($2::text[]) OR ended_at > now() - interval '1 day') ORDER BY id",
        pool,
        list(LIVE),
    )
    return [as_dict(r) for r in rows]


async def show(conn: asyncpg.Connection, *, name: str) -> dict[str, Any]:
    """The pool, its orchestrator state and its launches (live, or ended within a day)."""
    pool = await _fetch(conn, name)
    return {**pool, "launches": await launches(conn, name)}


async def update(conn: asyncpg.Connection, *, actor: str, name: str, body: Any) -> dict[str, Any]:
    before = await _fetch(conn, name, lock=True)
    spec = updated(spec_of(before), body)
    model_id = await _model_id(conn, spec)
    await conn.execute(
        f"UPDATE pools SET model_id = $2, ({_COLUMNS}) = "
        "ROW($3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16), "
        "updated_at = now() WHERE name = $1",
        name,
        model_id,
        *_values(spec),
    )
    await audit.record(
        conn,
        actor=actor,
        action="pool.update",
        entity=ENTITY,
        entity_id=name,
        before=spec_of(before).as_json(),
        after=spec.as_json(),
    )
    return await _fetch(conn, name)


async def delete(conn: asyncpg.Connection, *, actor: str, name: str) -> dict[str, Any]:
    """No longer declared: the orchestrator tears its replicas down."""
    before = await _fetch(conn, name, lock=True)
    await conn.execute("DELETE FROM pools WHERE name = $1", name)
    await audit.record(
        conn,
        actor=actor,
        action="pool.delete",
        entity=ENTITY,
        entity_id=name,
        before=spec_of(before).as_json(),
        after=None,
    )
    return {**before, "deleted": True}
