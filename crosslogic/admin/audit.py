"""Admin API route of the audit log, newest first."""

from __future__ import annotations

from aiohttp import web

from crosslogic import audit
from crosslogic.accounts.requests import audit_limit
from crosslogic.admin.context import READ_POOL, read

routes = web.RouteTableDef()


@routes.get("/admin/audit")
async def entries(request: web.Request) -> web.Response:
    limit = audit_limit(request.query.get("limit", "100"))
    # a history: an entry a second late is harmless, so a replica may serve it
    entity_id = request.query.get("entity_id")
    return await read(request, audit.entries, pool=READ_POOL, limit=limit, entity_id=entity_id)
