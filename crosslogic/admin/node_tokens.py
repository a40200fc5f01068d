"""Admin API routes of registration tokens: operators create, list and revoke them."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.fleet import tokens
from crosslogic.fleet.requests import parse_token_spec

routes = web.RouteTableDef()


@routes.post("/admin/node-tokens")
async def create(request: web.Request) -> web.Response:
    spec = parse_token_spec(await read_json(request))
    return await change(request, tokens.create, http_status=201, spec=spec)


@routes.get("/admin/node-tokens")
async def list_all(request: web.Request) -> web.Response:
    return await read(request, tokens.list_tokens)


@routes.delete("/admin/node-tokens/{token_id}")
async def revoke(request: web.Request) -> web.Response:
    return await change(request, tokens.revoke)
