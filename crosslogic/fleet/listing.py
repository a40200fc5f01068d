"""The operators' view of the node registry (``GET /admin/nodes``, ``crosslogic nodes
list``): every node with its metadata, load, state, health score and the weight xDS
publishes for it."""

from __future__ import annotations

from typing import Any

import asyncpg

from crosslogic.db.rows import as_dict
from crosslogic.fleet import lifecycle
from crosslogic.fleet.lifecycle import ROUTED
from crosslogic.fleet.nodes import NODE
from crosslogic.xds import weights


async def list_nodes(conn: asyncpg.Connection, *, heartbeat_timeout: float) -> list[dict[str, Any]]:
    """Every node, newest registration first, with its ``state``, ``live`` (routed and
    heard from within ``heartbeat_timeout`` seconds), ``health_score`` and ``weight``."""
    rows = await conn.fetch(
        f"""
        SELECT {NODE}, m.lb_strategy, n.load_weight, n.health_weight,
               extract(epoch FROM now() - n.last_heartbeat_at)::float8 AS age
        FROM nodes n JOIN models m ON m.id = n.model_id ORDER BY n.registered_at DESC
        """
    )
    out = []
    for r in rows:
        node = as_dict(r)
        age = node.pop("age")
        node["state"] = lifecycle.state(
            node["status"], heartbeat_age_s=age, heartbeat_timeout_s=heartbeat_timeout
        )
        node["live"] = node["state"] in ROUTED
        node["region"] = node["region_code"]
        load = weights.Load(
            node["requests_running"], node["requests_waiting"], node["kv_cache_usage_perc"], age
        )
        node["health_score"] = round(
            weights.health_score(load, heartbeat_timeout=heartbeat_timeout), 3
        )
        # the weight xDS publishes for it (settled with hysteresis at its heartbeats)
        stored = weights.Published(node.pop("load_weight"), node.pop("health_weight"))
        node["weight"] = weights.endpoint_weight(node.pop("lb_strategy"), stored)
        out.append(node)
    return out
