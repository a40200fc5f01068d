"""Key and model lookups: an in-process cache in front of PostgreSQL.

Verified keys are cached for ``KEY_CACHE_TTL``; unknown keys for a few seconds so a flood of
bad keys does not reach Postgres; concurrent misses for one key share one query. Nothing on
the per-request path waits on Postgres once a key is cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from crosslogic.db.connection import DatabaseUnavailable
from crosslogic.extauthz.decision import KeyRecord, Model

log = logging.getLogger(__name__)

_KEY_QUERY = """
SELECT k.id::text AS api_key_id, k.key_id, k.tenant_id::text AS tenant_id,
       k.environment_id::text AS environment_id, k.status AS key_status,
       t.status AS tenant_status, e.status AS environment_status, k.expires_at,
       k.allowed_models, k.rate_limit_rpm
FROM api_keys k
JOIN tenants t ON t.id = k.tenant_id
JOIN environments e ON e.id = k.environment_id
WHERE k.key_hash = $1
"""


@dataclass
class _Entry:
    record: KeyRecord | None
    fetched_at: float


Fetch = Callable[[bytes], Awaitable[KeyRecord | None]]


class KeyCache:
    """Caches key lookups per process; ``fetch`` raises DatabaseUnavailable when it cannot answer.

    When the database is unavailable, a key verified less than ``stale_for`` seconds ago keeps
    working; unknown keys are refused (the caller maps the error).
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float,
        negative_ttl: float = 5.0,
        stale_for: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale_for = stale_for
        self._clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._inflight: dict[bytes, asyncio.Future[KeyRecord | None]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, key_hash: bytes) -> _Entry | None:
        """The entry if still fresh: the fast path, no await."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        ttl = self._ttl if entry.record is not None else self._negative_ttl
        return entry if self._clock() - entry.fetched_at < ttl else None

    async def get(self, key_hash: bytes) -> KeyRecord | None:
        entry = self.cached(key_hash)
        if entry is not None:
            self.hits += 1
            return entry.record
        self.misses += 1
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        try:
            record = await self._load(key_hash)
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key_hash]

    async def _load(self, key_hash: bytes) -> KeyRecord | None:
        try:
            record = await self._fetch(key_hash)
        except DatabaseUnavailable:
            stale = self._entries.get(key_hash)
            if (
                stale is not None
                and stale.record is not None
                and self._clock() - stale.fetched_at < self._stale_for
            ):
                log.warning(
                    "database unavailable; serving key %s from stale cache", stale.record.key_id
                )
                return stale.record
            raise
        self._entries[key_hash] = _Entry(record, self._clock())
        return record


class PostgresKeys:
    """Reads keys and the model catalog from PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch_key(self, key_hash: bytes) -> KeyRecord | None:
        try:
            row = await self._pool.fetchrow(_KEY_QUERY, key_hash)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        if row is None:
            return None
        allowed = row["allowed_models"]
        return KeyRecord(
            api_key_id=row["api_key_id"],
            key_id=row["key_id"],
            tenant_id=row["tenant_id"],
            environment_id=row["environment_id"],
            key_status=row["key_status"],
            tenant_status=row["tenant_status"],
            environment_status=row["environment_status"],
            expires_at=row["expires_at"],
            allowed_models=frozenset(allowed) if allowed is not None else None,
            rate_limit_rpm=row["rate_limit_rpm"],
        )

    async def fetch_catalog(self) -> dict[str, Model]:
        try:
            rows = await self._pool.fetch("SELECT id, name FROM models WHERE status = 'active'")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return {r["name"]: Model(id=r["id"], name=r["name"]) for r in rows}
