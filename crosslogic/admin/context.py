"""What every admin route module shares: the app's typed state, reading a JSON body, the
audit actor of a request, a transaction per change, and the JSON reply (errors are raised:
see ``errors``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from crosslogic.errors import Invalid
from crosslogic.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)  # the primary: every change, every read before one
# Reads that a replica's lag of seconds cannot hurt (reports, the audit listing): a pool on
# DB_READ_HOST, or POOL itself without one. Never for what decides a change or a request.
READ_POOL = web.AppKey("read_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)

Row = dict[str, Any]


async def read_json(request: web.Request) -> Any:
    """The body as JSON (None without one); Invalid if it is not JSON."""
    if not request.can_read_body:
        return None
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise Invalid("The request body is not valid JSON.") from None


def actor_of(request: web.Request) -> str:
    """The audit log's actor: the operator (the admin token), with ``X-Actor`` (a name or a
    ticket) beside it if given."""
    named = request.headers.get("X-Actor", "").strip()[:100]
    return f"operator:{named}" if named else "operator"


async def change(
    request: web.Request,
    operation: Callable[..., Awaitable[Row]],
    /,
    *,
    http_status: int = 200,
    **arguments: Any,
) -> web.Response:
    """The reply to ``operation(connection, actor=..., **path, **arguments)`` (the path's
    parameters, e.g. ``tenant_id``, are passed by name), run in one transaction: committed
    unless it raises (then the change, its audit row and its NOTIFY all roll back)."""
    named = {**request.match_info, **arguments}
    async with request.app[POOL].acquire() as conn, conn.transaction():
        return reply(await operation(conn, actor=actor_of(request), **named), status=http_status)


async def read(
    request: web.Request,
    query: Callable[..., Awaitable[Row | list[Row]]],
    /,
    *,
    pool: web.AppKey[asyncpg.Pool] = POOL,
    **arguments: Any,
) -> web.Response:
    """The reply to the read-only ``query(connection, **path, **arguments)`` on a connection
    of ``pool`` (the primary unless the handler chooses READ_POOL; the path's parameters
    passed by name, as by :func:`change`)."""
    async with request.app[pool].acquire() as conn:
        return reply(await query(conn, **{**request.match_info, **arguments}))


def reply(result: Row | list[Row], *, status: int = 200) -> web.Response:
    """A row as itself, a list of rows as ``{"data": [...]}``."""
    if isinstance(result, list):
        return web.json_response({"data": result}, status=status)
    return web.json_response(result, status=status)
