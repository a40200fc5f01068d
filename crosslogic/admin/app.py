"""The admin API, assembled: its middlewares, its resources, and each noun's routes.

health (``/health``, ``/ready``, ``/metrics``), nodes (the node registry), node_tokens
(nodes' registration tokens), models (``/v1/models`` via Envoy), accounts (tenants,
environments, keys), audit, limits, usage (reports, also ``/v1/usage`` via Envoy), catalog
(models, regions), prices (list prices, tenant overrides), plans (and a tenant's billing
settings), credits, reservations (reserved capacity), stripe_customers (a tenant's Stripe
customer) and openapi each own their routes; ``context`` holds what they share, ``auth``
decides who may call what (the operator, a registration token, a node), ``errors``
answers every refusal, and ``request_ids`` gives every call the id its log lines carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin import (
    accounts,
    audit,
    auth,
    catalog,
    credits,
    health,
    limits,
    models,
    node_tokens,
    nodes,
    openapi,
    plans,
    prices,
    reservations,
    stripe_customers,
    usage,
)
from crosslogic.admin.context import POOL, READ_POOL, REDIS, SETTINGS
from crosslogic.admin.dependencies import DependencyGauge, watch_forever
from crosslogic.admin.errors import error_middleware
from crosslogic.admin.health import metrics
from crosslogic.admin.request_ids import request_ids
from crosslogic.db.budget import application_name
from crosslogic.db.connection import create_pool, read_settings
from crosslogic.fleet import tokens
from crosslogic.fleet.sweeper import sweep_forever
from crosslogic.redis_client import redis_address
from crosslogic.settings import Settings
from crosslogic.unexpected import UnexpectedErrors

__all__ = ["make_app", "metrics"]  # metrics: the admin process serves it on its own port too

log = logging.getLogger(__name__)

DEPENDENCY_CHECK_S = 2.0  # crosslogic_dependency_up: well within a scrape interval


def make_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    registry = registry or CollectorRegistry()
    unexpected = UnexpectedErrors(edge="admin", registry=registry, logger=log)
    dependencies = DependencyGauge(registry)
    app = web.Application(
        middlewares=[request_ids, error_middleware(unexpected), auth.authenticate]
    )
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            settings, max_size=settings.admin_db_pool, application_name=application_name("admin")
        )
        # reports a lag of seconds cannot hurt may read a replica (context.READ_POOL)
        read_pool = pool
        if settings.db_read_host is not None:
            read_pool = await create_pool(
                read_settings(settings),
                max_size=settings.admin_db_pool,
                application_name=application_name("admin", "read"),
            )
        # readiness pings Redis: of a cluster, the first seed node
        host, port = redis_address(settings)
        client = aioredis.Redis(
            host=host,
            port=port,
            password=settings.redis_password or None,
            socket_timeout=2,
        )
        app[POOL], app[READ_POOL], app[REDIS] = pool, read_pool, client
        if settings.node_registration_token:
            async with pool.acquire() as conn, conn.transaction():
                await tokens.ensure_configured(conn, settings.node_registration_token)
        sweeper = asyncio.create_task(
            sweep_forever(
                pool,
                every=settings.node_heartbeat_interval,
                drain_timeout=settings.node_drain_timeout,
                heartbeat_timeout=settings.node_heartbeat_timeout,
            ),
            name="node-sweeper",
        )
        watcher = asyncio.create_task(
            watch_forever(lambda: health.checks(app), dependencies, every=DEPENDENCY_CHECK_S),
            name="dependency-watch",
        )
        yield
        for task in (sweeper, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        if read_pool is not pool:
            await read_pool.close()
        await pool.close()

    app.cleanup_ctx.append(resources)
    for module in (
        health,
        nodes,
        node_tokens,
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
