"""The billing process: the access-log consumer (aggregation and Stripe export come later)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from prometheus_client import CollectorRegistry

from crosslogic.billing.consumer import AccessLogConsumer, BillingMetrics
from crosslogic.billing.settlement import TokenSettler
from crosslogic.db.connection import create_pool
from crosslogic.ratelimit.resp import PipelinedRedis
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2)
    redis = PipelinedRedis(
        settings.redis_host or "127.0.0.1",
        settings.redis_port,
        password=settings.redis_password,
        timeout=1.0,
    )
    consumer = AccessLogConsumer(
        pool,
        settings.access_log.resolve(),
        BillingMetrics(registry),
        settler=TokenSettler(redis, registry),
    )
    task = asyncio.create_task(consumer.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # finish the batch in hand: its offset commits with its rows, so nothing is lost either way
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    redis.close()
    await pool.close()
