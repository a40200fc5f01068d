"""Admin API routes of prepaid credits: grant, list a tenant's grants, read its balance."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from crosslogic.accounts import credits
from crosslogic.admin.context import change, read, read_json

routes = web.RouteTableDef()


@routes.post("/admin/tenants/{tenant_id}/credits")
async def grant(request: web.Request) -> web.Response:
    spec = credits.grant_spec(await read_json(request), now=datetime.now(UTC))
    return await change(request, credits.grant, spec=spec, http_status=201)


@routes.get("/admin/tenants/{tenant_id}/credits")
async def list_grants(request: web.Request) -> web.Response:
    return await read(request, credits.list_grants)


@routes.get("/admin/tenants/{tenant_id}/balance")
async def balance(request: web.Request) -> web.Response:
    return await read(request, credits.balance)
