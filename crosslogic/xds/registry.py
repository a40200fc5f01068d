"""Reads the node registry from PostgreSQL and resolves node addresses to IPs.

EDS endpoints must be IP addresses (Envoy does not resolve them), while nodes may register
with a hostname (containers), so names are resolved here, outside the pure snapshot. A
node's weight under its model's strategy comes from the weights its heartbeats stored
(:mod:`crosslogic.xds.weights`: settled with hysteresis), the same for every xDS replica.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

import asyncpg

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.xds import weights
from crosslogic.xds.snapshot import ModelEntry, NodeEntry

log = logging.getLogger(__name__)

_NODES = """
SELECT n.id, n.model_id, n.address, n.port, n.status, n.region_code, n.load_weight,
       n.health_weight, n.transport
FROM nodes n
WHERE n.status IN ('active', 'draining')
  AND n.last_heartbeat_at > now() - make_interval(secs => $1)
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


class OutageCredit:
    """A database outage silences every node: their heartbeats cannot be stored. Read right
    after it, the registry would show every node dead and xDS would publish no endpoint at
    all. So, for ``timeout`` seconds after the registry is read again, a node's silence may
    be longer by the outage's length: time to heartbeat again before its silence counts.
    Pure (clock injected)."""

    def __init__(self, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._down_since: float | None = None
        self._credit = 0.0
        self._until = 0.0

    def failed(self) -> None:
        if self._down_since is None:
            self._down_since = self._clock()

    def read(self) -> None:
        now = self._clock()
        if self._down_since is not None:
            self._credit, self._until = now - self._down_since, now + self._timeout
            self._down_since = None

    def timeout(self) -> float:
        """The silence after which a node counts as gone, now."""
        now = self._clock()
        if self._down_since is not None:  # down, or this is the first read since
            return self._timeout + (now - self._down_since)
        return self._timeout + (self._credit if now < self._until else 0.0)


class NodeRegistry:
    """Models (with their strategy and the catalog's regions) and the nodes that heartbeated
    within ``heartbeat_timeout`` seconds (see :class:`OutageCredit`), weighted."""

    def __init__(self, pool: asyncpg.Pool, *, heartbeat_timeout: float) -> None:
        self._pool = pool
        self._silence = OutageCredit(heartbeat_timeout)

    async def read(self) -> tuple[list[ModelEntry], list[NodeEntry]]:
        try:
            with postgres_errors():
                async with self._pool.acquire() as conn:
                    models = await conn.fetch(
                        "SELECT id, name, lb_strategy FROM models WHERE status = 'active' "
                        "ORDER BY id"
                    )
                    regions = await conn.fetch("SELECT code FROM regions ORDER BY code")
                    rows = await conn.fetch(_NODES, self._silence.timeout())
        except Unavailable:
            self._silence.failed()
            raise
        self._silence.read()
        codes = tuple(r["code"] for r in regions)
        entries = [
            ModelEntry(id=r["id"], name=r["name"], strategy=r["lb_strategy"], regions=codes)
            for r in models
        ]
        strategy = {m.id: m.strategy for m in entries}
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
                        region=row["region_code"],
                        weight=weights.endpoint_weight(
                            strategy.get(row["model_id"], ""),
                            weights.Published(row["load_weight"], row["health_weight"]),
                        ),
                        transport=row["transport"],
                        host=row["address"],
                    )
                )
        return entries, nodes
