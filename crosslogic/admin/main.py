"""The admin process: the admin API on SERVER_PORT and /metrics on PROMETHEUS_PORT."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin.app import make_app, metrics
from crosslogic.lifecycle import run_until_signalled
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    runner = web.AppRunner(make_app(settings, registry=registry), access_log=None)
    await runner.setup()
    prometheus = web.Application()
    prometheus.router.add_get("/metrics", metrics)
    prom_runner = web.AppRunner(prometheus, access_log=None)
    await prom_runner.setup()
    try:
        await web.TCPSite(runner, settings.server_host, settings.server_port).start()
        await web.TCPSite(prom_runner, settings.server_host, settings.prometheus_port).start()
        await run_until_signalled()
    finally:
        await prom_runner.cleanup()
        await runner.cleanup()
