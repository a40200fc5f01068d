"""Admin API handlers for rate limits (``rate_limits`` rows), audited like account changes."""

from __future__ import annotations

from aiohttp import web

from crosslogic.admin.accounts import actor_of, in_transaction, respond
from crosslogic.admin.app import POOL, error_response, read_json
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit import admin as ops
from crosslogic.ratelimit.config import parse_limit


async def list_limits(request: web.Request) -> web.Response:
    scope = ops.scope_filter(request.query.get("scope"))
    if isinstance(scope, ApiError):
        return error_response(scope)
    subject = request.query.get("subject") or None
    async with request.app[POOL].acquire() as conn:
        return respond(await ops.list_limits(conn, scope=scope, subject=subject))


async def set_limit(request: web.Request) -> web.Response:
    row = parse_limit(await read_json(request))
    if isinstance(row, ApiError):
        return error_response(row)
    return respond(
        await in_transaction(request, lambda c: ops.set_limit(c, actor=actor_of(request), row=row))
    )


async def delete_limit(request: web.Request) -> web.Response:
    limit_id = ops.limit_id_of(request.match_info["limit_id"])
    if isinstance(limit_id, ApiError):
        return error_response(limit_id)
    return respond(
        await in_transaction(
            request, lambda c: ops.delete_limit(c, actor=actor_of(request), limit_id=limit_id)
        )
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/limits", list_limits)
    r.add_put("/admin/limits", set_limit)
    r.add_delete("/admin/limits/{limit_id}", delete_limit)
