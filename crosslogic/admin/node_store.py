"""The node registry in PostgreSQL: register, heartbeat, deregister, list."""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.admin.registration import Heartbeat, Registration
from crosslogic.contracts import channels
from crosslogic.errors import Invalid, NotFound


class NodeStore:
    """Nodes' rows; a change of the set of live nodes is announced on ``crosslogic_nodes``
    (xDS rebuilds Envoy's endpoints from it)."""

    def __init__(self, pool: asyncpg.Pool, *, heartbeat_timeout: float) -> None:
        self._pool = pool
        self._timeout = heartbeat_timeout

    async def register(self, reg: Registration) -> str:
        async with self._pool.acquire() as conn, conn.transaction():
            model_id = await conn.fetchval(
                "SELECT id FROM models WHERE name = $1 AND status = 'active'", reg.model
            )
            if model_id is None:
                raise NotFound(
                    "model",
                    reg.model,
                    message=f"The model '{reg.model}' is not in the catalog.",
                    param="model",
                )
            if not await conn.fetchval("SELECT 1 FROM regions WHERE code = $1", reg.region):
                raise Invalid(
                    f"Unknown region '{reg.region}'.", code="unknown_region", param="region"
                )
            # a node restarted on the same address under a new id replaces the old row
            await conn.execute(
                "UPDATE nodes SET status = 'dead' "
                "WHERE address = $1 AND port = $2 AND id <> $3 AND status <> 'dead'",
                reg.address,
                reg.port,
                reg.node_id,
            )
            await conn.execute(
                """
                INSERT INTO nodes (id, model_id, address, port, provider, region_code, gpu_type)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (id) DO UPDATE SET model_id = $2, address = $3, port = $4,
                    provider = $5, region_code = $6, gpu_type = $7, status = 'active',
                    registered_at = now(), last_heartbeat_at = now()
                """,
                reg.node_id,
                model_id,
                reg.address,
                reg.port,
                reg.provider,
                reg.region,
                reg.gpu_type,
            )
            await conn.execute(f"NOTIFY {channels.NODES}")
        return reg.node_id

    async def heartbeat(self, node_id: str, beat: Heartbeat) -> bool:
        status = await self._pool.fetchval(
            """
            UPDATE nodes SET last_heartbeat_at = now(), requests_running = $2,
                requests_waiting = $3, kv_cache_usage_perc = $4
            WHERE id = $1 AND status <> 'dead' RETURNING status
            """,
            node_id,
            beat.requests_running,
            beat.requests_waiting,
            beat.kv_cache_usage_perc,
        )
        return status is not None

    async def deregister(self, node_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE nodes SET status = 'dead' WHERE id = $1 AND status <> 'dead' RETURNING 1",
                node_id,
            )
            await conn.execute(f"NOTIFY {channels.NODES}")
        return done is not None

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            """
            SELECT n.id, m.name AS model, n.address, n.port, n.provider, n.region_code,
                   n.gpu_type, n.status, n.requests_running, n.requests_waiting,
                   n.kv_cache_usage_perc, n.registered_at, n.last_heartbeat_at,
                   (n.status <> 'dead'
                    AND n.last_heartbeat_at > now() - make_interval(secs => $1)) AS live
            FROM nodes n JOIN models m ON m.id = n.model_id
            ORDER BY n.registered_at DESC
            """,
            self._timeout,
        )
        return [
            {
                **dict(r),
                "registered_at": r["registered_at"].isoformat(),
                "last_heartbeat_at": r["last_heartbeat_at"].isoformat(),
                "region": r["region_code"],
            }
            for r in rows
        ]
