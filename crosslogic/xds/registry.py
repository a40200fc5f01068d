"""Reads the node registry from PostgreSQL and resolves node addresses to IPs.

EDS endpoints must be IP addresses (Envoy does not resolve them), while nodes may register
with a hostname (containers), so names are resolved here, outside the pure snapshot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import asyncpg

from crosslogic.db.errors import postgres_errors
from crosslogic.xds.snapshot import ModelEntry, NodeEntry

log = logging.getLogger(__name__)

_NODES = """
SELECT id, model_id, address, port, status
FROM nodes
WHERE status IN ('active', 'draining')
  AND last_heartbeat_at > now() - make_interval(secs => $1)
"""


async def _resolve(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve node address %s: %s", address, exc)
        return None
    return str(infos[0][4][0]) if infos else None


class NodeRegistry:
    """Models and the nodes that heartbeated within ``heartbeat_timeout`` seconds."""

    def __init__(self, pool: asyncpg.Pool, *, heartbeat_timeout: float) -> None:
        self._pool = pool
        self._timeout = heartbeat_timeout

    async def read(self) -> tuple[list[ModelEntry], list[NodeEntry]]:
        with postgres_errors():
            async with self._pool.acquire() as conn:
                models = await conn.fetch(
                    "SELECT id, name FROM models WHERE status = 'active' ORDER BY id"
                )
                rows = await conn.fetch(_NODES, self._timeout)
        nodes = []
        for row in rows:
            ip = await _resolve(row["address"])
            if ip is not None:
                nodes.append(
                    NodeEntry(
                        id=row["id"],
                        model_id=row["model_id"],
                        ip=ip,
                        port=row["port"],
                        draining=row["status"] == "draining",
                    )
                )
        return [ModelEntry(id=r["id"], name=r["name"]) for r in models], nodes
