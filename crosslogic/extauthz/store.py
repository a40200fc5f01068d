"""Key and model lookups: an in-process cache in front of PostgreSQL.

Verified keys are cached for ``KEY_CACHE_TTL``; unknown keys for a few seconds so a flood of
bad keys does not reach Postgres; concurrent misses for one key share one query. Nothing on
the per-request path waits on Postgres once a key is cached.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from crosslogic.db.errors import postgres_errors
from crosslogic.errors import Unavailable
from crosslogic.extauthz.decision import KeyRecord, Model

log = logging.getLogger(__name__)

_KEY_QUERY = """
SELECT k.id::text AS api_key_id, k.key_id, k.tenant_id::text AS tenant_id,
       k.environment_id::text AS environment_id, k.status AS key_status,
       t.status AS tenant_status, e.status AS environment_status,
       LEAST(k.expires_at, k.grace_ends_at) AS expires_at,  -- LEAST skips NULLs
       k.allowed_models, k.allowed_regions, k.default_region, k.rate_limit_rpm, t.plan,
       t.quota_reason
FROM api_keys k
JOIN tenants t ON t.id = k.tenant_id
JOIN environments e ON e.id = k.environment_id
WHERE k.key_hash = $1
"""


def key_record(row: Mapping[str, Any]) -> KeyRecord:
    """A key's row as the cache keeps it. Values many keys share (statuses, plan, tenant and
    environment ids) are interned: each row brings fresh strings, and kept one per key they
    were about half of the cache's memory (bench.keycache, with slots on the records: 1,026
    -> 509 MB per million keys)."""
    allowed = row["allowed_models"]
    regions = row["allowed_regions"]
    return KeyRecord(
        api_key_id=row["api_key_id"],
        key_id=row["key_id"],
        tenant_id=sys.intern(row["tenant_id"]),
        environment_id=sys.intern(row["environment_id"]),
        key_status=sys.intern(row["key_status"]),
        tenant_status=sys.intern(row["tenant_status"]),
        environment_status=sys.intern(row["environment_status"]),
        expires_at=row["expires_at"],
        allowed_models=frozenset(allowed) if allowed is not None else None,
        rate_limit_rpm=row["rate_limit_rpm"],
        plan=sys.intern(row["plan"]),
        quota=row["quota_reason"],
        allowed_regions=frozenset(regions) if regions is not None else None,
        default_region=row["default_region"],
    )


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None
    fetched_at: float


Fetch = Callable[[bytes], Awaitable[KeyRecord | None]]


class KeyCache:
    """Caches key lookups per process; ``fetch`` raises Unavailable when it cannot answer.

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
        self._inflight: dict[tuple[bytes, int], asyncio.Future[KeyRecord | None]] = {}
        # bumped by every invalidation: a fetch that started before one must not be cached
        self._generation = 0
        self._used: dict[str, float] = {}

    def invalidate(self, *, kind: str, ident: str) -> int:
        """Forget what we know about one key, environment or tenant; returns entries dropped."""
        self._generation += 1
        field = {"key": "api_key_id", "environment": "environment_id", "tenant": "tenant_id"}
        attribute = field.get(kind)
        if attribute is None:  # unknown kind: be safe, forget everything
            return self.clear()
        stale = [
            h
            for h, e in self._entries.items()
            if e.record is not None and getattr(e.record, attribute) == ident
        ]
        for key_hash in stale:
            del self._entries[key_hash]
        return len(stale)

    def clear(self) -> int:
        self._generation += 1
        dropped = len(self._entries)
        self._entries.clear()
        return dropped

    def touch(self, api_key_id: str, *, at: float) -> None:
        """Remember that a key was used: flushed to ``last_used_at`` in batches, not per request."""
        self._used[api_key_id] = at

    def take_used(self) -> dict[str, float]:
        used, self._used = self._used, {}
        return used

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
            return entry.record
        # join a fetch only if it started after the last invalidation: one that started before
        # may return the row as it was before a revoke
        flight = (key_hash, self._generation)
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            record = await self._load(key_hash, generation=flight[1])
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[flight]

    async def _load(self, key_hash: bytes, *, generation: int) -> KeyRecord | None:
        try:
            record = await self._fetch(key_hash)
        except Unavailable:
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
        if generation == self._generation:
            self._entries[key_hash] = _Entry(record, self._clock())
        return record


class PostgresKeys:
    """Reads keys and the model catalog from PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch_key(self, key_hash: bytes) -> KeyRecord | None:
        with postgres_errors():
            row = await self._pool.fetchrow(_KEY_QUERY, key_hash)
        if row is None:
            return None
        return key_record(row)

    async def record_last_used(self, used: dict[str, float]) -> None:
        """One statement for every key used since the last flush."""
        if not used:
            return
        ids = list(used)
        times = [datetime.fromtimestamp(used[i], UTC) for i in ids]
        with postgres_errors():
            await self._pool.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(coalesce(last_used_at, u.t), u.t) "
                "FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, t) WHERE api_keys.id = u.id",
                ids,
                times,
            )

    async def fetch_catalog(self) -> dict[str, Model]:
        with postgres_errors():
            rows = await self._pool.fetch(
                "SELECT id, name, lb_strategy FROM models WHERE status = 'active'"
            )
        return {
            r["name"]: Model(id=r["id"], name=r["name"], strategy=r["lb_strategy"]) for r in rows
        }

    async def fetch_regions(self) -> frozenset[str]:
        with postgres_errors():
            rows = await self._pool.fetch("SELECT code FROM regions")
        return frozenset(r["code"] for r in rows)
