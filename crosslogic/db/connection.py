"""Connecting to PostgreSQL; a server that cannot be reached is :class:`Unavailable`.

Every connection names its holder (``application_name``, see :mod:`crosslogic.db.budget`),
so pg_stat_activity shows which process holds what.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from crosslogic.db.budget import COMMAND
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


def read_settings(settings: Settings) -> Settings:
    """``settings`` pointed at the read replica (``DB_READ_HOST``), or unchanged without
    one: the primary then serves the reads too."""
    if settings.db_read_host is None:
        return settings
    return settings.with_overrides(db_host=settings.db_read_host, db_port=settings.db_read_port)


async def create_pool(
    settings: Settings, *, max_size: int = 5, application_name: str = COMMAND, min_size: int = 1
) -> asyncpg.Pool:
    """A service's pool, once PostgreSQL answers: a service started (or restarted by its
    supervisor) while the database is away waits for it, saying so, instead of crashing
    until its supervisor gives up on it. A service passes its ``*_DB_POOL`` setting and its
    own name: its share of the connection budget."""
    delay = 0.5
    while True:
        try:
            return await asyncpg.create_pool(
                min_size=min_size,
                max_size=max_size,
                command_timeout=10,
                server_settings={"application_name": application_name},
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


async def connect(settings: Settings, *, application_name: str = COMMAND) -> asyncpg.Connection:
    """One connection: a command's (the default name), or a service's dedicated one (a
    LISTEN connection, named by its holder)."""
    try:
        return await asyncpg.connect(
            timeout=10,
            server_settings={"application_name": application_name},
            **connect_kwargs(settings),
        )
    except (*DRIVER_UNAVAILABLE, asyncpg.PostgresError) as exc:
        # a wrong password or a missing database also means "cannot work here now"
        where = f"{settings.db_host}:{settings.db_port}"
        raise Unavailable("PostgreSQL", f"cannot connect at {where}: {exc}") from exc
