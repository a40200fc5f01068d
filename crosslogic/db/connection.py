"""Connecting to PostgreSQL; a server that cannot be reached is :class:`Unavailable`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from crosslogic.db.errors import DRIVER_UNAVAILABLE
from crosslogic.errors import Unavailable
from crosslogic.settings import Settings

log = logging.getLogger(__name__)


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """asyncpg keyword arguments; ``DB_HOST`` may be a Unix socket directory."""
    return {
        "host": settings.db_host,
        "port": settings.db_port,
        "user": settings.db_user,
        "password": settings.db_password or None,
        "database": settings.db_name,
    }


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 5, application_name: str = ""
) -> asyncpg.Pool:
    """A service's pool, once PostgreSQL answers: a service started (or restarted by its
    supervisor) while the database is away waits for it, saying so, instead of crashing
    until its supervisor gives up on it. ``application_name`` shows in pg_stat_activity:
    which process holds a connection."""
    delay = 0.5
    while True:
        try:
            return await asyncpg.create_pool(
                min_size=min_size,
                max_size=max_size,
                command_timeout=10,
                server_settings={"application_name": application_name}
                if application_name
                else None,
                **connect_kwargs(settings),
            )
        except DRIVER_UNAVAILABLE as exc:
            log.warning(
                "PostgreSQL at %s:%s unavailable (%s); retrying in %.1fs",
                settings.db_host,
                settings.db_port,
                exc,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(timeout=10, **connect_kwargs(settings))
    except (*DRIVER_UNAVAILABLE, asyncpg.PostgresError) as exc:
        # a wrong password or a missing database also means "cannot work here now"
        where = f"{settings.db_host}:{settings.db_port}"
        raise Unavailable("PostgreSQL", f"cannot connect at {where}: {exc}") from exc
