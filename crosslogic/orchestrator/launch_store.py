"""The orchestrator's state in PostgreSQL: who leads, what is declared, what was launched,
and the load and reserved capacity that decide a pool's size.

Leadership is a session advisory lock held on the orchestrator's own connection: of two
orchestrators only the holder acts; if it dies, its connection closes, the lock is freed and
the other takes over at its next round. Every launch's row, and its deterministic cluster
name, is committed before SkyPilot is asked to launch it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from crosslogic.orchestrator.autoscale import NodeLoad
from crosslogic.orchestrator.pool_store import FROM_POOLS, LIVE, POOL, pool_out
from crosslogic.orchestrator.tasks import cluster_name

LEADER_LOCK = 0x43524F50  # "CROP": the orchestrators' leader lock


@dataclass(frozen=True)
class LaunchRow:
    id: int
    pool: str
    cluster_name: str
    spec_hash: str
    state: str
    request_id: str | None
    down_request_id: str | None


async def try_lead(conn: asyncpg.Connection) -> bool:
    """True if this connection holds (or now takes) the leader lock."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK))


async def declared(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [pool_out(r) for r in await conn.fetch(f"SELECT {POOL} {FROM_POOLS} ORDER BY p.name")]


async def live_launches(conn: asyncpg.Connection) -> list[LaunchRow]:
    rows = await conn.fetch(
        "SELECT id, pool_name, cluster_name, spec_hash, state, request_id, down_request_id "
        "FROM pool_launches WHERE state = ANY($1::text[]) ORDER BY id",
        list(LIVE),
    )
    return [LaunchRow(*r.values()) for r in rows]


async def record_intent(
    conn: asyncpg.Connection,
    *,
    pool: str,
    spec_hash: str,
    cost_per_hour: Decimal | None,
    resources: str,
) -> LaunchRow:
    """A new launch of ``pool``, state ``launching``: its id and cluster name."""
    launch_id = int(await conn.fetchval("SELECT nextval('pool_launches_id_seq')"))
    name = cluster_name(pool, launch_id)
    await conn.execute(
        "INSERT INTO pool_launches (id, pool_name, cluster_name, spec_hash, cost_per_hour, "
        "resources) VALUES ($1, $2, $3, $4, $5, $6)",
        launch_id,
        pool,
        name,
        spec_hash,
        cost_per_hour,
        resources,
    )
    return LaunchRow(launch_id, pool, name, spec_hash, "launching", None, None)


async def set_request(
    conn: asyncpg.Connection, launch_id: int, *, request_id: str, column: str = "request_id"
) -> None:
    assert column in {"request_id", "down_request_id"}
    await conn.execute(
        f"UPDATE pool_launches SET {column} = $2, updated_at = now() WHERE id = $1",
        launch_id,
        request_id,
    )


async def mark(
    conn: asyncpg.Connection,
    launch_id: int,
    *,
    state: str,
    reason: str | None = None,
    only_from: str | None = None,
) -> bool:
    """Move the launch to ``state`` (from ``only_from`` only, if given); True if it moved."""
    status = await conn.execute(
        "UPDATE pool_launches SET state = $2, reason = coalesce($3, reason), "
        "updated_at = now(), "
        "up_at = CASE WHEN $2 = 'up' THEN now() ELSE up_at END, "
        "ended_at = CASE WHEN $2 IN ('terminated', 'failed') THEN now() ELSE ended_at END "
        "WHERE id = $1 AND ($4::text IS NULL OR state = $4)",
        launch_id,
        state,
        reason,
        only_from,
    )
    return bool(status.endswith(" 1"))


async def set_pool_state(
    conn: asyncpg.Connection,
    pool: str,
    *,
    target: int,
    scaled_at: datetime | None,
    estimate: dict[str, Any] | None,
) -> None:
    await conn.execute(
        "UPDATE pools SET target_replicas = $2, last_scaled_at = $3, "
        "estimate = coalesce($4::jsonb, estimate), observed_at = now() WHERE name = $1",
        pool,
        target,
        scaled_at,
        None if estimate is None else json.dumps(estimate),
    )


async def node_loads(
    conn: asyncpg.Connection, *, model: str, region: str | None, heartbeat_timeout: float
) -> list[NodeLoad]:
    """The last heartbeat of each routed node of ``model`` (in ``region``, unless None)
    heard from within ``heartbeat_timeout`` seconds."""
    rows = await conn.fetch(
        "SELECT n.requests_running, n.requests_waiting, n.kv_cache_usage_perc, n.capacity "
        "FROM nodes n JOIN models m ON m.id = n.model_id WHERE m.name = $1 "
        "AND ($2::text IS NULL OR n.region_code = $2) AND n.status = 'active' "
        "AND n.last_heartbeat_at > now() - make_interval(secs => $3)",
        model,
        region,
        heartbeat_timeout,
    )
    return [NodeLoad(r[0], r[1], float(r[2]), r[3]) for r in rows]


async def reserved_tokens_per_minute(
    conn: asyncpg.Connection, *, model: str, region: str | None
) -> int:
    """Tokens per minute of ``model`` reserved now: reservations in ``region`` and those of
    any region (a pool without a region counts every reservation of its model)."""
    value = await conn.fetchval(
        "SELECT coalesce(sum(r.tokens_per_minute), 0) FROM reservations r "
        "JOIN models m ON m.id = r.model_id WHERE m.name = $1 "
        "AND ($2::text IS NULL OR r.region_code IS NULL OR r.region_code = $2) "
        "AND r.starts_at <= now() AND now() < r.ends_at",
        model,
        region,
    )
    return int(value)
