"""A RateLimiter with its resources: Redis, the limit table and the task that keeps it current.

Whichever process decides (the rate-limit service, or ext_authz with RATELIMIT_AT=authz)
opens it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg
from prometheus_client import CollectorRegistry

from crosslogic.contracts import channels
from crosslogic.db.budget import application_name, listen_name
from crosslogic.db.connection import connect, create_pool
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.ratelimit.config import LimitTable
from crosslogic.ratelimit.limiter import RateLimiter, RateLimitMetrics
from crosslogic.ratelimit.store import RedisCounters
from crosslogic.ratelimit.table_store import load_rows
from crosslogic.redis_client import RedisClient, open_redis
from crosslogic.settings import Settings

log = logging.getLogger(__name__)

# Operators' changes are announced on channels.LIMITS; the poll catches a lost notification.
RELOAD_EVERY_S = 2.0


async def load_table(pool: asyncpg.Pool, settings: Settings) -> LimitTable:
    return LimitTable(await load_rows(pool), default_key_rpm=settings.default_key_rpm)


async def follow_limits(
    limiter: RateLimiter, pool: asyncpg.Pool, settings: Settings, *, wake: asyncio.Event
) -> None:
    """Reload the limit table when an operator changes it (NOTIFY) and every few seconds; a
    failed reload keeps the last good table."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=RELOAD_EVERY_S)
        wake.clear()
        try:
            with postgres_errors():
                limiter.table = await load_table(pool, settings)
        except Unavailable as exc:
            log.warning("rate-limit reload failed, keeping the last table: %s", exc)


@dataclass
class OpenLimiter:
    limiter: RateLimiter
    task: asyncio.Task[None]  # the table follower: the process dies with it
    redis: RedisClient  # also carries ext_authz's journal writes: one write per turn
    _pool: asyncpg.Pool
    _listener: asyncpg.Connection

    async def close(self) -> None:
        self.task.cancel()
        # a follower that died has told the process already (crosslogic.lifecycle)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.redis.close()
        await self._listener.close()
        await self._pool.close()


async def open_limiter(
    settings: Settings, registry: CollectorRegistry, *, holder: str = application_name("ratelimit")
) -> OpenLimiter:
    """The limiter, its pool named ``holder`` (pg_stat_activity's application_name) and its
    LISTEN connection (``holder``-listen): see crosslogic.db.budget.limiter_holders."""
    # well below Envoy's call timeouts: a Redis outage costs at most this, and is counted
    redis = open_redis(settings, timeout=settings.ratelimit_redis_timeout)
    counters = RedisCounters(redis)
    try:
        await counters.prepare()
    except Unavailable as exc:
        log.warning("Redis unreachable at start, limits fail open or closed until it is: %s", exc)
    # the primary: a reload woken by NOTIFY must see the change that sent it
    pool = await create_pool(settings, max_size=settings.ratelimit_db_pool, application_name=holder)
    limiter = RateLimiter(
        counters=counters,
        metrics=RateLimitMetrics(registry),
        table=await load_table(pool, settings),
    )
    wake = asyncio.Event()
    listener = await connect(settings, application_name=listen_name(holder))
    await listener.add_listener(channels.LIMITS, lambda *_: wake.set())
    task = asyncio.create_task(follow_limits(limiter, pool, settings, wake=wake), name="limits")
    return OpenLimiter(limiter, task, redis, pool, listener)
