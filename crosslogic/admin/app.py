"""The admin API: health, readiness, metrics, the node registry, and /v1/models via Envoy."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin.errors import error_middleware
from crosslogic.admin.nodes import NodeStore
from crosslogic.admin.registration import parse_heartbeat, parse_registration
from crosslogic.db.connection import create_pool
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.metrics import exposition
from crosslogic.openai_errors import ApiError, invalid_request
from crosslogic.settings import Settings
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
NODES = web.AppKey("nodes", NodeStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ApiError) -> web.Response:
    return web.Response(status=error.status, body=error.body(), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    if not request.can_read_body:
        return None
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            body=invalid_request("The request body is not valid JSON.").body(),
            content_type="application/json",
        ) from None


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/admin/* needs the operator token (never a tenant key); without one configured, the
    admin API stays locked rather than open."""
    if request.path.startswith("/admin/") and request.path != "/admin/openapi.json":
        token = request.app[SETTINGS].admin_token
        sent = request.headers.get("Authorization", "")
        if not token or not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            message = (
                "Missing or wrong operator token (ADMIN_TOKEN)."
                if token
                else "The admin API is locked: set ADMIN_TOKEN."
            )
            return error_response(
                ApiError(401, message, "invalid_request_error", "invalid_admin_token")
            )
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        with postgres_errors():
            await asyncio.wait_for(request.app[POOL].fetchval("SELECT 1"), timeout=2)
        checks["postgres"] = "ok"
    except Unavailable as exc:
        checks["postgres"] = f"error: {exc}"
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=2)
        checks["redis"] = "ok"
    except Exception as exc:  # any Redis failure means "not ready"; the reason is reported
        checks["redis"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), content_type="text/plain", charset="utf-8")


async def register_node(request: web.Request) -> web.Response:
    reg = parse_registration(await read_json(request))
    if isinstance(reg, ApiError):
        return error_response(reg)
    result = await request.app[NODES].register(reg)
    if isinstance(result, ApiError):
        return error_response(result)
    log.info("node %s registered: %s at %s:%d", result, reg.model, reg.address, reg.port)
    return web.json_response(
        {
            "node_id": result,
            "heartbeat_interval_s": request.app[SETTINGS].node_heartbeat_interval,
        }
    )


def _not_found(node_id: str) -> web.Response:
    return error_response(
        ApiError(
            404,
            f"Unknown node '{node_id}'; register again.",
            "invalid_request_error",
            "node_not_found",
        )
    )


async def heartbeat(request: web.Request) -> web.Response:
    beat = parse_heartbeat(await read_json(request))
    if isinstance(beat, ApiError):
        return error_response(beat)
    node_id = request.match_info["node_id"]
    if not await request.app[NODES].heartbeat(node_id, beat):
        return _not_found(node_id)
    return web.json_response({"status": "ok"})


async def deregister(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    if not await request.app[NODES].deregister(node_id):
        return _not_found(node_id)
    return web.json_response({"status": "deregistered"})


async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response({"nodes": await request.app[NODES].list()})


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's model list, for requests Envoy authorised (it sets the allowed-models header)."""
    allowed = request.headers.get("x-crosslogic-allowed-models")
    if allowed is None:  # not through Envoy's ext_authz: refuse rather than leak the catalog
        return error_response(
            ApiError(401, "Unauthenticated.", "invalid_request_error", "invalid_api_key")
        )
    rows = await request.app[POOL].fetch(
        "SELECT name, extract(epoch FROM created_at)::bigint AS created FROM models "
        "WHERE status = 'active' ORDER BY name"
    )
    names = None if allowed == "*" else set(allowed.split(","))
    data = [
        {"id": r["name"], "object": "model", "created": r["created"], "owned_by": "crosslogic"}
        for r in rows
        if names is None or r["name"] in names
    ]
    wanted = request.match_info.get("model")
    if wanted is not None:
        match = [m for m in data if m["id"] == wanted]
        if not match:
            return error_response(
                ApiError(
                    404,
                    f"The model '{wanted}' does not exist.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                )
            )
        return web.json_response(match[0])
    return web.json_response({"object": "list", "data": data})


def make_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    unexpected = UnexpectedErrors(
        edge="admin", registry=registry or CollectorRegistry(), logger=log
    )
    app = web.Application(middlewares=[error_middleware(unexpected), admin_auth])
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings, min_size=1, max_size=5)
        client = aioredis.Redis(
            host=settings.redis_host or "127.0.0.1",
            port=settings.redis_port,
            password=settings.redis_password or None,
            socket_timeout=2,
        )
        app[POOL], app[REDIS] = pool, client
        app[NODES] = NodeStore(pool, heartbeat_timeout=settings.node_heartbeat_timeout)
        yield
        await client.aclose()
        await pool.close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/nodes/register", register_node)
    app.router.add_post("/admin/nodes/{node_id}/heartbeat", heartbeat)
    app.router.add_post("/admin/nodes/{node_id}/deregister", deregister)
    app.router.add_get("/admin/nodes", list_nodes)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", list_models)
    from crosslogic.admin import accounts, limits, openapi  # they import app: registered late

    accounts.add_routes(app)
    limits.add_routes(app)
    openapi.add_route(app)
    return app
