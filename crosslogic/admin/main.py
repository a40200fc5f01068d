"""The admin process: the admin API on SERVER_PORT and /metrics on PROMETHEUS_PORT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin.app import make_app, metrics
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    runner = web.AppRunner(make_app(settings, registry=registry), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.server_host, settings.server_port).start()
    prometheus = web.Application()
    prometheus.router.add_get("/metrics", metrics)
    prom_runner = web.AppRunner(prometheus, access_log=None)
    await prom_runner.setup()
    await web.TCPSite(prom_runner, settings.server_host, settings.prometheus_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await prom_runner.cleanup()
    await runner.cleanup()
