"""Admin API routes of prices: a model's list price versions and a tenant's overrides.
Versions are only added, never edited: see ``crosslogic.catalog.prices``."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.catalog import prices
from crosslogic.catalog import requests as parse

routes = web.RouteTableDef()


@routes.get("/admin/models/{model}/prices")
async def price_history(request: web.Request) -> web.Response:
    return await read(request, prices.history)


@routes.post("/admin/models/{model}/prices")
async def add_price(request: web.Request) -> web.Response:
    version = parse.price_version(await read_json(request), now=datetime.now(UTC))
    return await change(request, prices.add_version, version=version, http_status=201)


@routes.get("/admin/tenants/{tenant_id}/prices")
async def list_overrides(request: web.Request) -> web.Response:
    return await read(request, prices.overrides, model=request.query.get("model") or None)


@routes.post("/admin/tenants/{tenant_id}/prices")
async def set_override(request: web.Request) -> web.Response:
    spec = parse.tenant_price(await read_json(request), now=datetime.now(UTC))
    return await change(request, prices.set_override, spec=spec, http_status=201)


@routes.delete("/admin/tenants/{tenant_id}/prices/{model}")
async def remove_override(request: web.Request) -> web.Response:
    when = parse.removal_time(request.query.get("effective_at"), now=datetime.now(UTC))
    return await change(request, prices.remove_override, effective_at=when)
