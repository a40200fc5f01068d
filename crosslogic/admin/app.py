"""The admin API, assembled: its middlewares, its resources, and each noun's routes.

health (``/health``, ``/ready``, ``/metrics``), nodes (the node registry), models
(``/v1/models`` via Envoy), accounts (tenants, environments, keys), audit, limits, usage
(reports, also ``/v1/usage`` via Envoy), catalog (models, regions), prices (list prices,
tenant overrides), plans (and a tenant's billing settings), credits, reservations (reserved
capacity), stripe_customers (a tenant's Stripe customer) and openapi each own their routes;
``context`` holds what they share, ``errors`` answers every refusal.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin import (
    accounts,
    audit,
    catalog,
    credits,
    health,
    limits,
    models,
    nodes,
    openapi,
    plans,
    prices,
    reservations,
    stripe_customers,
    usage,
)
from crosslogic.admin.context import NODES, POOL, REDIS, SETTINGS
from crosslogic.admin.errors import Handler, error_middleware, error_response
from crosslogic.admin.health import metrics
from crosslogic.admin.node_store import NodeStore
from crosslogic.db.connection import create_pool
from crosslogic.openai_errors import ApiError
from crosslogic.settings import Settings
from crosslogic.unexpected import UnexpectedErrors

__all__ = ["make_app", "metrics"]  # metrics: the admin process serves it on its own port too

log = logging.getLogger(__name__)


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/admin/* needs the operator token (never a tenant key); without one configured, the
    admin API stays locked rather than open."""
    if request.path.startswith("/admin/") and request.path != openapi.PATH:
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
    for module in (
        health,
        nodes,
        models,
        accounts,
        audit,
        limits,
        usage,
        catalog,
        prices,
        plans,
        credits,
        reservations,
        stripe_customers,
        openapi,
    ):
        app.router.add_routes(module.routes)
    return app
