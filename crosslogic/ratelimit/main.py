"""One rate-limit process: Redis connection, the limit table, gRPC server on a shared port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.db.connection import connect, create_pool
from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.ratelimit.admin import CHANNEL, load_rows
from crosslogic.ratelimit.config import LimitTable
from crosslogic.ratelimit.resp import PipelinedRedis
from crosslogic.ratelimit.service import RateLimitMetrics, RateLimitService
from crosslogic.ratelimit.store import RedisCounters
from crosslogic.settings import Settings

log = logging.getLogger(__name__)

# Well below Envoy's call timeout: a Redis outage costs at most this, and is counted.
REDIS_TIMEOUT_S = 0.03
# Operators' changes are announced on admin.CHANNEL; the poll catches a lost notification.
RELOAD_EVERY_S = 2.0


async def load_table(pool: asyncpg.Pool, settings: Settings) -> LimitTable:
    return LimitTable(await load_rows(pool), default_key_rpm=settings.default_key_rpm)


async def follow_limits(
    service: RateLimitService, pool: asyncpg.Pool, settings: Settings, *, wake: asyncio.Event
) -> None:
    """Reload the limit table when an operator changes it (NOTIFY) and every few seconds; a
    failed reload keeps the last good table."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=RELOAD_EVERY_S)
        wake.clear()
        try:
            service.table = await load_table(pool, settings)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("rate-limit reload failed, keeping the last table: %s", exc)


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    client = PipelinedRedis(
        settings.redis_host or "127.0.0.1",
        settings.redis_port,
        password=settings.redis_password,
        timeout=REDIS_TIMEOUT_S,
    )
    pool = await create_pool(settings, min_size=1, max_size=2)
    service = RateLimitService(
        counters=RedisCounters(client),
        metrics=RateLimitMetrics(registry),
        table=await load_table(pool, settings),
    )
    wake = asyncio.Event()
    listener = await connect(settings)
    await listener.add_listener(CHANNEL, lambda *_: wake.set())
    reload = asyncio.create_task(follow_limits(service, pool, settings, wake=wake), name="limits")
    server = new_server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    try:
        await serve_until_signalled(
            server, host=settings.server_host, port=settings.ratelimit_port, tasks=(reload,)
        )
    finally:
        reload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload
        client.close()
        await listener.close()
        await pool.close()
