"""Admin API routes of GPU pools: operators declare, list, show, change and delete them
(audited as entity ``pool``); the orchestrator (``ORCHESTRATOR=skypilot``) does the rest."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.orchestrator import pool_store
from crosslogic.orchestrator.pools import pool_spec

routes = web.RouteTableDef()


@routes.post("/admin/pools")
async def create(request: web.Request) -> web.Response:
    spec = pool_spec(await read_json(request))
    return await change(request, pool_store.create, http_status=201, spec=spec)


@routes.get("/admin/pools")
async def list_all(request: web.Request) -> web.Response:
    return await read(request, pool_store.list_pools)


@routes.get("/admin/pools/{name}")
async def show(request: web.Request) -> web.Response:
    return await read(request, pool_store.show)


@routes.patch("/admin/pools/{name}")
async def update(request: web.Request) -> web.Response:
    return await change(request, pool_store.update, body=await read_json(request))


@routes.delete("/admin/pools/{name}")
async def delete(request: web.Request) -> web.Response:
    return await change(request, pool_store.delete)
