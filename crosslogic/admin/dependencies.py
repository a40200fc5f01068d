"""``crosslogic_dependency_up{dependency}``: whether PostgreSQL and Redis answer the admin
process, checked in the background (Prometheus alerts on it; no exporter of their own needed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

DEPENDENCIES = ("postgres", "redis")


class DependencyGauge:
    """1 while a dependency answers, 0 while it does not; present at 0 until first checked."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "crosslogic_dependency_up",
            "1 if the dependency (postgres, redis) answered the admin process's last check",
            ["dependency"],
            registry=registry,
            # ADMIN_WORKERS processes check the same servers: the latest answer counts
            multiprocess_mode="mostrecent",
        )
        for name in DEPENDENCIES:
            self.up.labels(name).set(0)

    def show(self, checks: dict[str, str]) -> None:
        for name, outcome in checks.items():
            self.up.labels(name).set(1 if outcome == "ok" else 0)


async def watch_forever(
    check: Callable[[], Awaitable[dict[str, str]]], gauge: DependencyGauge, *, every: float
) -> None:
    while True:
        try:
            gauge.show(await check())
        except Exception as exc:  # a check that raises says nothing: both unknown, so down
            log.warning("dependency check failed: %r", exc)
            gauge.show(dict.fromkeys(DEPENDENCIES, "error"))
        await asyncio.sleep(every)
