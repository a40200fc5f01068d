"""Admin API routes of rate limits (``rate_limits`` rows), audited like account changes."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.context import change, read, read_json
from crosslogic.ratelimit import table_store
from crosslogic.ratelimit.config import parse_limit

routes = web.RouteTableDef()


@routes.get("/admin/limits")
async def list_limits(request: web.Request) -> web.Response:
    scope = table_store.scope_filter(request.query.get("scope"))
    subject = request.query.get("subject") or None
    return await read(request, table_store.list_limits, scope=scope, subject=subject)


@routes.put("/admin/limits")
async def set_limit(request: web.Request) -> web.Response:
    row = parse_limit(await read_json(request))
    return await change(request, table_store.set_limit, row=row)


@routes.delete("/admin/limits/{limit_id}")
async def delete_limit(request: web.Request) -> web.Response:
    limit_id = table_store.limit_id_of(request.match_info["limit_id"])
    return await change(request, table_store.delete_limit, limit_id=limit_id)
