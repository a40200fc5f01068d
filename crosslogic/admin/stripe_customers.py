"""Admin API routes of a tenant's Stripe customer (the Stripe export bills tenants that
have one), audited like every account change."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.billing import customers

routes = web.RouteTableDef()


@routes.get("/admin/tenants/{tenant_id}/stripe-customer")
async def get_customer(request: web.Request) -> web.Response:
    return await read(request, customers.get)


@routes.put("/admin/tenants/{tenant_id}/stripe-customer")
async def set_customer(request: web.Request) -> web.Response:
    customer = customers.customer_change(await read_json(request))
    return await change(request, customers.set_customer, stripe_customer_id=customer)
