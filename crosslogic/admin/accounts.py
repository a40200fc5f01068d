"""Admin API handlers for tenants, environments, keys and the audit log.

The operator is identified by the admin token; ``X-Actor`` (an operator's name or ticket)
is recorded in the audit log beside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from crosslogic.accounts import operations as ops
from crosslogic.accounts import requests as parse
from crosslogic.admin.app import POOL, error_response, read_json
from crosslogic.openai_errors import ApiError

Result = dict[str, Any] | list[dict[str, Any]] | ApiError


def actor_of(request: web.Request) -> str:
    named = request.headers.get("X-Actor", "").strip()[:100]
    return f"operator:{named}" if named else "operator"


def respond(result: Result, *, status: int = 200) -> web.Response:
    if isinstance(result, ApiError):
        return error_response(result)
    if isinstance(result, list):
        return web.json_response({"data": result}, status=status)
    return web.json_response(result, status=status)


async def in_transaction(
    request: web.Request, work: Callable[[asyncpg.Connection], Awaitable[Result]]
) -> Result:
    """Run ``work`` in one transaction; an ApiError result rolls it back."""
    async with request.app[POOL].acquire() as conn:
        return await ops.atomically(conn, work)


async def create_tenant(request: web.Request) -> web.Response:
    parsed = parse.tenant_name(await read_json(request))
    if isinstance(parsed, ApiError):
        return error_response(parsed)
    name, plan = parsed
    result = await in_transaction(
        request, lambda c: ops.create_tenant(c, actor=actor_of(request), name=name, plan=plan)
    )
    return respond(result, status=201)


async def list_tenants(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return respond(await ops.list_tenants(conn))


async def get_tenant(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return respond(await ops.get_tenant(conn, request.match_info["tenant_id"]))


async def patch_tenant(request: web.Request) -> web.Response:
    status = parse.status_change(await read_json(request), ("active", "suspended"))
    if isinstance(status, ApiError):
        return error_response(status)
    tenant_id = request.match_info["tenant_id"]
    return respond(
        await in_transaction(
            request,
            lambda c: ops.set_tenant_status(
                c, actor=actor_of(request), tenant_id=tenant_id, status=status
            ),
        )
    )


async def create_environment(request: web.Request) -> web.Response:
    name = parse.environment_name(await read_json(request))
    if isinstance(name, ApiError):
        return error_response(name)
    tenant_id = request.match_info["tenant_id"]
    result = await in_transaction(
        request,
        lambda c: ops.create_environment(
            c, actor=actor_of(request), tenant_id=tenant_id, name=name
        ),
    )
    return respond(result, status=201)


async def list_environments(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        tenant = await ops.get_tenant(conn, request.match_info["tenant_id"])
        if isinstance(tenant, ApiError):
            return error_response(tenant)
        return respond(await ops.list_environments(conn, tenant["id"]))


async def patch_environment(request: web.Request) -> web.Response:
    status = parse.status_change(await read_json(request), ("active", "disabled"))
    if isinstance(status, ApiError):
        return error_response(status)
    environment_id = request.match_info["environment_id"]
    return respond(
        await in_transaction(
            request,
            lambda c: ops.set_environment_status(
                c, actor=actor_of(request), environment_id=environment_id, status=status
            ),
        )
    )


async def create_key(request: web.Request) -> web.Response:
    spec = parse.key_spec(await read_json(request), now=datetime.now(UTC))
    if isinstance(spec, ApiError):
        return error_response(spec)
    environment_id = request.match_info["environment_id"]
    result = await in_transaction(
        request,
        lambda c: ops.create_key(
            c, actor=actor_of(request), environment_id=environment_id, spec=spec
        ),
    )
    return respond(result, status=201)


async def list_keys(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return respond(
            await ops.list_keys(
                conn,
                tenant_id=request.query.get("tenant_id"),
                environment_id=request.query.get("environment_id"),
            )
        )


async def get_key(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return respond(await ops.get_key(conn, request.match_info["key_id"]))


async def rotate_key(request: web.Request) -> web.Response:
    grace = parse.grace_seconds(await read_json(request))
    if isinstance(grace, ApiError):
        return error_response(grace)
    key_id = request.match_info["key_id"]
    result = await in_transaction(
        request,
        lambda c: ops.rotate_key(c, actor=actor_of(request), key_id=key_id, grace_seconds=grace),
    )
    return respond(result, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    return respond(
        await in_transaction(
            request, lambda c: ops.revoke_key(c, actor=actor_of(request), key_id=key_id)
        )
    )


async def audit(request: web.Request) -> web.Response:
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        return error_response(
            ApiError(400, "'limit' must be an integer.", "invalid_request_error", None, "limit")
        )
    async with request.app[POOL].acquire() as conn:
        return respond(
            await ops.audit_entries(conn, limit=limit, entity_id=request.query.get("entity_id"))
        )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/tenants", create_tenant)
    r.add_get("/admin/tenants", list_tenants)
    r.add_get("/admin/tenants/{tenant_id}", get_tenant)
    r.add_patch("/admin/tenants/{tenant_id}", patch_tenant)
    r.add_post("/admin/tenants/{tenant_id}/environments", create_environment)
    r.add_get("/admin/tenants/{tenant_id}/environments", list_environments)
    r.add_patch("/admin/environments/{environment_id}", patch_environment)
    r.add_post("/admin/environments/{environment_id}/keys", create_key)
    r.add_get("/admin/keys", list_keys)
    r.add_get("/admin/keys/{key_id}", get_key)
    r.add_post("/admin/keys/{key_id}/rotate", rotate_key)
    r.add_post("/admin/keys/{key_id}/revoke", revoke_key)
    r.add_get("/admin/audit", audit)
