"""Admin API routes of tenants, environments and API keys.

The operator is identified by the admin token; ``X-Actor`` (an operator's name or ticket)
is recorded in the audit log beside it. Each change runs in one transaction with its audit
row; an error raised on the way rolls it back and is answered by ``errors``. The path's
parameters reach the operations by name (``tenant_id``, ``environment_id``, ``key_id``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from crosslogic.accounts import api_keys, environments, tenants
from crosslogic.accounts import requests as parse
from crosslogic.admin.context import change, read, read_json

routes = web.RouteTableDef()


def _reader(
    query: Callable[..., Awaitable[Any]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return await read(request, query)

    return handler


def _status_changer(
    setter: Callable[..., Awaitable[Any]], allowed: tuple[str, ...]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        status = parse.status_change(await read_json(request), allowed)
        return await change(request, setter, status=status)

    return handler


# reads named by their path alone, and the status changes (suspend, disable...)
for _path, _query in (
    ("/admin/tenants", tenants.list_all),
    ("/admin/tenants/{tenant_id}", tenants.get),
    ("/admin/tenants/{tenant_id}/environments", environments.of_tenant),
    ("/admin/keys/{key_id}", api_keys.get),
):
    routes.get(_path)(_reader(_query))
routes.patch("/admin/tenants/{tenant_id}")(
    _status_changer(tenants.set_status, ("active", "suspended"))
)
routes.patch("/admin/environments/{environment_id}")(
    _status_changer(environments.set_status, ("active", "disabled"))
)


@routes.post("/admin/tenants")
async def create_tenant(request: web.Request) -> web.Response:
    name, plan = parse.tenant_name(await read_json(request))
    return await change(request, tenants.create, name=name, plan=plan, http_status=201)


@routes.post("/admin/tenants/{tenant_id}/environments")
async def create_environment(request: web.Request) -> web.Response:
    name = parse.environment_name(await read_json(request))
    return await change(request, environments.create, name=name, http_status=201)


@routes.post("/admin/environments/{environment_id}/keys")
async def create_key(request: web.Request) -> web.Response:
    spec = parse.key_spec(await read_json(request), now=datetime.now(UTC))
    return await change(request, api_keys.create, spec=spec, http_status=201)


@routes.get("/admin/keys")
async def list_keys(request: web.Request) -> web.Response:
    query = request.query
    return await read(
        request,
        api_keys.list_some,
        tenant_id=query.get("tenant_id"),
        environment_id=query.get("environment_id"),
    )


@routes.post("/admin/keys/{key_id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    grace = parse.grace_seconds(await read_json(request))
    return await change(request, api_keys.rotate, grace_seconds=grace, http_status=201)


@routes.post("/admin/keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    return await change(request, api_keys.revoke)
