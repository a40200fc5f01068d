"""Admin API routes of plans and of a tenant's billing settings (plan, mode, spend cap)."""

from __future__ import annotations

from aiohttp import web

from crosslogic.accounts import plans
from crosslogic.admin.context import change, read, read_json

routes = web.RouteTableDef()


@routes.get("/admin/plans")
async def list_plans(request: web.Request) -> web.Response:
    return await read(request, plans.list_plans)


@routes.get("/admin/plans/{name}")
async def get_plan(request: web.Request) -> web.Response:
    return await read(request, plans.get_plan)


@routes.put("/admin/plans/{name}")
async def set_plan(request: web.Request) -> web.Response:
    plans.plan_name(request.match_info["name"])
    spec = plans.plan_spec(await read_json(request))
    return await change(request, plans.set_plan, spec=spec)


@routes.get("/admin/tenants/{tenant_id}/billing")
async def billing_of(request: web.Request) -> web.Response:
    return await read(request, plans.billing_of)


@routes.patch("/admin/tenants/{tenant_id}/billing")
async def set_billing(request: web.Request) -> web.Response:
    settings = plans.billing_change(await read_json(request))
    return await change(request, plans.set_billing, change=settings)
