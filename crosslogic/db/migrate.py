"""Apply the numbered SQL files in ``migrations/`` that have not been applied yet.

Each file runs in its own transaction together with its row in ``schema_migrations``; an
advisory lock makes concurrent ``crosslogic migrate`` runs wait instead of racing.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_ID = 0x43524F53  # "CROS": any constant shared by every migrator


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("crosslogic.db") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text()) for name in names]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the versions applied (empty when up to date)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", version)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
