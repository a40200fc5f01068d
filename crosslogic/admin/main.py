"""The admin process: the admin API on SERVER_PORT and /metrics on PROMETHEUS_PORT (each of
ADMIN_WORKERS processes serves both)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from crosslogic.admin import node_targets
from crosslogic.admin.app import make_app, metrics
from crosslogic.admin.context import POOL
from crosslogic.lifecycle import run_until_signalled
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    app = make_app(settings, registry=registry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    prometheus = web.Application()
    prometheus.router.add_get("/metrics", metrics)
    prometheus.router.add_get("/targets/nodes", node_targets.handler(lambda: app[POOL]))
    prom_runner = web.AppRunner(prometheus, access_log=None)
    await prom_runner.setup()
    # ADMIN_WORKERS processes share both ports (SO_REUSEPORT: the kernel spreads the
    # connections); one process alone keeps a plain bind, which fails on a taken port
    shared = settings.admin_workers > 1
    try:
        await web.TCPSite(
            runner, settings.server_host, settings.server_port, reuse_port=shared
        ).start()
        await web.TCPSite(
            prom_runner, settings.server_host, settings.prometheus_port, reuse_port=shared
        ).start()
        await run_until_signalled()
    finally:
        await prom_runner.cleanup()
        await runner.cleanup()
