"""Admin API routes of the node registry: nodes register, heartbeat and deregister."""

from __future__ import annotations

import logging

from aiohttp import web

from crosslogic.admin.context import NODES, SETTINGS, read_json
from crosslogic.admin.registration import parse_heartbeat, parse_registration
from crosslogic.errors import NotFound

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


def _unknown(node_id: str) -> NotFound:
    return NotFound("node", node_id, message=f"Unknown node '{node_id}'; register again.")


@routes.post("/admin/nodes/register")
async def register_node(request: web.Request) -> web.Response:
    reg = parse_registration(await read_json(request))
    node_id = await request.app[NODES].register(reg)
    log.info("node %s registered: %s at %s:%d", node_id, reg.model, reg.address, reg.port)
    return web.json_response(
        {
            "node_id": node_id,
            "heartbeat_interval_s": request.app[SETTINGS].node_heartbeat_interval,
        }
    )


@routes.post("/admin/nodes/{node_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    beat = parse_heartbeat(await read_json(request))
    node_id = request.match_info["node_id"]
    if not await request.app[NODES].heartbeat(node_id, beat):
        raise _unknown(node_id)
    return web.json_response({"status": "ok"})


@routes.post("/admin/nodes/{node_id}/deregister")
async def deregister(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    if not await request.app[NODES].deregister(node_id):
        raise _unknown(node_id)
    return web.json_response({"status": "deregistered"})


@routes.get("/admin/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response({"nodes": await request.app[NODES].list()})
