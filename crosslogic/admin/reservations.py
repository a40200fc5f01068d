"""Admin API routes of reserved capacity: sell a tenant a reservation, list a tenant's, read
one, cancel one that has not started."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.billing import reservation_store
from crosslogic.billing.reservations import reservation_spec

routes = web.RouteTableDef()


@routes.post("/admin/tenants/{tenant_id}/reservations")
async def create(request: web.Request) -> web.Response:
    spec = reservation_spec(await read_json(request), now=datetime.now(UTC))
    return await change(request, reservation_store.create, spec=spec, http_status=201)


@routes.get("/admin/tenants/{tenant_id}/reservations")
async def list_for(request: web.Request) -> web.Response:
    return await read(request, reservation_store.list_for)


@routes.get("/admin/reservations/{reservation_id}")
async def show(request: web.Request) -> web.Response:
    return await read(request, reservation_store.show)


@routes.delete("/admin/reservations/{reservation_id}")
async def cancel(request: web.Request) -> web.Response:
    return await change(request, reservation_store.cancel)
