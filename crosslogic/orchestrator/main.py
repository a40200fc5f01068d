"""The orchestrator process (``ORCHESTRATOR=skypilot``; ``crosslogic orchestrator`` or the
``orchestrator`` service of ``crosslogic serve``): a round every ORCHESTRATOR_INTERVAL.

Any number may run: one leads (a PostgreSQL advisory lock), the others wait to take over.
A round that PostgreSQL or SkyPilot fails is logged and retried at the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.db.budget import application_name
from crosslogic.db.connection import create_pool
from crosslogic.db.errors import postgres_errors
from crosslogic.errors import DomainError
from crosslogic.lifecycle import run_until_signalled
from crosslogic.orchestrator import config
from crosslogic.settings import Settings

log = logging.getLogger(__name__)
POOL_SIZE = 2  # a round's queries, one at a time, and a background launch's update
# plus the leader's own connection, which holds the advisory lock


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    cfg = config.load(os.environ, settings)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # SkyPilot's import logs its setup
    from crosslogic.orchestrator.orchestrator import Orchestrator
    from crosslogic.orchestrator.sky_sdk import Sky  # imports skypilot: the optional extra

    pool = await create_pool(
        settings, max_size=POOL_SIZE + 1, application_name=application_name("orchestrator")
    )
    leading = Gauge(
        "crosslogic_orchestrator_leader", "1 while this orchestrator leads", registry=registry
    )
    actions = Counter(
        "crosslogic_orchestrator_actions",
        "Actions taken on SkyPilot clusters, by kind",
        ["action"],
        registry=registry,
    )
    orchestrator = Orchestrator(
        pool,
        Sky(),
        launcher=cfg.launcher,
        heartbeat_timeout=settings.node_heartbeat_timeout,
    )

    async def rounds() -> None:
        while True:
            try:
                with postgres_errors():
                    taken = await orchestrator.tick()
                leading.set(0 if taken is None else 1)
                for action in taken or ():
                    actions.labels(type(action).__name__.lower()).inc()
            except DomainError as exc:  # PostgreSQL or SkyPilot away: the next round retries
                log.warning("orchestrator round failed: %s", exc)
            await asyncio.sleep(cfg.interval)

    try:
        await run_until_signalled([asyncio.create_task(rounds(), name="orchestrator")])
    finally:
        await orchestrator.close()
        await pool.close()
