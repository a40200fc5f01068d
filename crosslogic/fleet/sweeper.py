"""The admin process's periodic sweep of the node registry (see :func:`nodes.sweep`): drains
that outlived their timeout end in removal, nodes silent for long are forgotten. Several
admin processes may sweep at once: each change is a row-locked UPDATE, made once."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.fleet import nodes

log = logging.getLogger(__name__)


async def sweep_once(
    pool: asyncpg.Pool, *, drain_timeout: float, heartbeat_timeout: float
) -> list[str]:
    with postgres_errors():
        async with pool.acquire() as conn, conn.transaction():
            return await nodes.sweep(
                conn, drain_timeout=drain_timeout, heartbeat_timeout=heartbeat_timeout
            )


async def sweep_forever(
    pool: asyncpg.Pool, *, every: float, drain_timeout: float, heartbeat_timeout: float
) -> None:
    """Sweep every ``every`` seconds until cancelled; a database outage skips a round."""
    while True:
        await asyncio.sleep(every)
        try:
            changed = await sweep_once(
                pool, drain_timeout=drain_timeout, heartbeat_timeout=heartbeat_timeout
            )
        except Unavailable as exc:
            log.warning("node sweep skipped: %s", exc)
            continue
        if changed:
            log.info("node sweep: %s removed or forgotten", ", ".join(changed))
