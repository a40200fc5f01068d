"""The GPU nodes as Prometheus targets (HTTP service discovery, ``http_sd_configs``):
``GET /targets/nodes`` on PROMETHEUS_PORT, beside ``/metrics``. Nodes come and go live, so
Prometheus learns them from the registry instead of a static list; each target is labelled
with its node id, model and region. Only addresses and ports, no credential: served on the
metrics port, which is not the client-facing one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import asyncpg
from aiohttp import web

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable

# draining nodes still serve requests, and a node whose heartbeats stopped is scraped too:
# its failing scrape is what the NodeDown alert sees
_TARGETS = """
SELECT n.id, n.address, n.port, m.name AS model, n.region_code AS region
FROM nodes n JOIN models m ON m.id = n.model_id
WHERE n.status IN ('active', 'draining')
ORDER BY n.id
"""


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def groups(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One target group per node, in http_sd's format."""
    return [
        {
            "targets": [host_port(r["address"], r["port"])],
            "labels": {"node_id": r["id"], "model": r["model"], "region": r["region"] or ""},
        }
        for r in rows
    ]


def handler(pool: Callable[[], asyncpg.Pool]) -> Callable[[web.Request], Any]:
    """``pool``: the admin app's pool, looked up per request (it exists once the app runs)."""

    async def targets(request: web.Request) -> web.Response:
        try:
            with postgres_errors():
                rows = await pool().fetch(_TARGETS)
        except Unavailable as exc:
            # Prometheus keeps the targets it had when a refresh fails
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(groups(rows))

    return targets
