"""A database made ready for the system: migrations applied, the demo setup created."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from crosslogic import demo
from crosslogic.db.connection import connect
from crosslogic.db.migrate import migrate
from crosslogic.settings import Settings

T = TypeVar("T")


async def _on_connection(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    conn = await connect(settings)
    try:
        return await work(conn)
    finally:
        await conn.close()


async def migrate_database(settings: Settings) -> list[str]:
    """Apply pending migrations; returns their names."""
    return await _on_connection(settings, migrate)


async def migrate_and_seed(settings: Settings, *, model: str) -> demo.Demo:
    """Migrations, then the demo model, tenant and environment and a new demo key."""

    async def work(conn: asyncpg.Connection) -> demo.Demo:
        await migrate(conn)
        return await demo.seed(conn, model=model)

    return await _on_connection(settings, work)
