"""Admin API routes of the node registry: nodes register, heartbeat, drain and deregister
themselves (with their own secrets: see ``auth``); operators list, drain and remove them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

import asyncpg
from aiohttp import web

from crosslogic.admin.auth import PRINCIPAL, SCOPE
from crosslogic.admin.context import POOL, SETTINGS, read_json
from crosslogic.fleet import listing, nodes
from crosslogic.fleet.lifecycle import ACTIVE, REMOVED
from crosslogic.fleet.requests import parse_heartbeat, parse_registration

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class NodeChange(Protocol):
    """An operator's or a node's change of one node (drain, remove)."""

    def __call__(
        self, conn: asyncpg.Connection, *, actor: str, node_id: str
    ) -> Awaitable[dict[str, Any]]: ...


@routes.post("/admin/nodes/register")
async def register_node(request: web.Request) -> web.Response:
    reg = parse_registration(await read_json(request))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        node = await nodes.register(conn, reg, scope=request[SCOPE])
    log.info("node %s registered: %s at %s:%d", reg.node_id, reg.model, reg.address, reg.port)
    return web.json_response(
        {
            "node_id": reg.node_id,
            "node_credential": node["node_credential"],
            "heartbeat_interval_s": request.app[SETTINGS].node_heartbeat_interval,
        }
    )


@routes.post("/admin/nodes/{node_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    beat = parse_heartbeat(await read_json(request))
    node_id = request.match_info["node_id"]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        status = await nodes.heartbeat(
            conn, node_id, beat, heartbeat_timeout=request.app[SETTINGS].node_heartbeat_timeout
        )
    if status == REMOVED:  # this heartbeat ended its drain (committed): the node must stop
        raise nodes.removed_error(node_id)
    return web.json_response({"status": "ok" if status == ACTIVE else status})


@routes.post("/admin/nodes/{node_id}/deregister")
async def deregister(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await nodes.deregister(conn, node_id=request.match_info["node_id"])
    return web.json_response({"status": "deregistered"})


async def _lifecycle(request: web.Request, change: NodeChange, done: str) -> web.Response:
    async with request.app[POOL].acquire() as conn, conn.transaction():
        node = await change(conn, actor=request[PRINCIPAL], node_id=request.match_info["node_id"])
    log.info("node %s %s (%s)", node["id"], done, request[PRINCIPAL])
    return web.json_response(node)


@routes.post("/admin/nodes/{node_id}/drain")
async def drain(request: web.Request) -> web.Response:
    return await _lifecycle(request, nodes.drain, "draining")


@routes.delete("/admin/nodes/{node_id}")
async def remove(request: web.Request) -> web.Response:
    return await _lifecycle(request, nodes.remove, "removed")


@routes.get("/admin/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    timeout = request.app[SETTINGS].node_heartbeat_timeout
    async with request.app[POOL].acquire() as conn:
        found = await listing.list_nodes(conn, heartbeat_timeout=timeout)
    return web.json_response({"nodes": found})
