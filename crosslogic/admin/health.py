"""Health (the process answers), readiness (PostgreSQL and Redis answer) and /metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from crosslogic.admin.context import POOL, REDIS
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.metrics import exposition

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def checks(app: web.Application) -> dict[str, str]:
    """ "ok" or "error: <why>" for PostgreSQL and Redis (readiness and their up gauge)."""
    found: dict[str, str] = {}
    try:
        with postgres_errors():
            await asyncio.wait_for(app[POOL].fetchval("SELECT 1"), timeout=2)
        found["postgres"] = "ok"
    except Unavailable as exc:
        found["postgres"] = f"error: {exc}"
    try:
        await asyncio.wait_for(app[REDIS].ping(), timeout=2)
        found["redis"] = "ok"
    except Exception as exc:  # any Redis failure means "not ready"; the reason is reported
        found["redis"] = f"error: {exc}"
    return found


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    found = await checks(request.app)
    ok = all(v == "ok" for v in found.values())
    return web.json_response(
        {"status": "ready" if ok else "not ready", "checks": found}, status=200 if ok else 503
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), content_type="text/plain", charset="utf-8")
