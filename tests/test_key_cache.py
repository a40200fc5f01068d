"""KeyCache without a database: TTLs, stale serving when Postgres is down, invalidation; and
what ext_authz answers when the cache cannot."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client import CollectorRegistry

from crosslogic.errors import Unavailable
from crosslogic.extauthz import keys
from crosslogic.extauthz.authorizer import Authorizer, AuthzMetrics
from crosslogic.extauthz.decision import KeyRecord
from crosslogic.extauthz.service import AuthorizationService
from crosslogic.extauthz.store import KeyCache
from tests.support.key_records import key_record

record = key_record


class FakeDb:
    def __init__(self) -> None:
        self.rows: dict[bytes, KeyRecord] = {b"h": record()}
        self.down = False
        self.queries = 0

    async def fetch(self, key_hash: bytes) -> KeyRecord | None:
        self.queries += 1
        await asyncio.sleep(0)
        if self.down:
            raise Unavailable("PostgreSQL", "down")
        return self.rows.get(key_hash)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[KeyCache, FakeDb, Clock]:
    db, clock = FakeDb(), Clock()
    return KeyCache(db.fetch, ttl=60, negative_ttl=5, stale_for=300, clock=clock), db, clock


def test_hits_misses_and_concurrent_misses_share_one_query() -> None:
    async def go() -> None:
        cache, db, clock = make()
        results = await asyncio.gather(*(cache.get(b"h") for _ in range(10)))
        assert all(r == record() for r in results) and db.queries == 1
        assert await cache.get(b"unknown") is None and await cache.get(b"unknown") is None
        assert db.queries == 2  # the unknown key was negatively cached
        clock.now = 6
        await cache.get(b"unknown")
        assert db.queries == 3  # negative entries expire sooner
        clock.now = 61
        await cache.get(b"h")
        assert db.queries == 4

    asyncio.run(go())


def test_database_down_keeps_verified_keys_for_a_bounded_time() -> None:
    async def go() -> None:
        cache, db, clock = make()
        await cache.get(b"h")
        db.down = True
        clock.now = 100  # past the TTL: a refresh is attempted and fails
        assert await cache.get(b"h") == record()
        with pytest.raises(Unavailable):
            await cache.get(b"never-seen")
        clock.now = 400  # past stale_for: refused too
        with pytest.raises(Unavailable):
            await cache.get(b"h")

    asyncio.run(go())


def test_invalidation_by_key_environment_and_tenant() -> None:
    async def go() -> None:
        cache, db, _ = make()
        db.rows[b"h2"] = record(api_key_id="b", environment_id="e2")
        await cache.get(b"h")
        await cache.get(b"h2")
        assert cache.invalidate(kind="key", ident="a") == 1
        assert cache.invalidate(kind="environment", ident="e2") == 1
        await cache.get(b"h")
        assert cache.invalidate(kind="tenant", ident="t") == 1
        assert cache.invalidate(kind="mystery", ident="x") == 0  # clears everything

    asyncio.run(go())


def test_a_fetch_racing_an_invalidation_is_not_cached() -> None:
    async def go() -> None:
        cache, _, _ = make()
        pending = asyncio.ensure_future(cache.get(b"h"))
        await asyncio.sleep(0)  # the fetch has started and read the old row
        cache.invalidate(kind="key", ident="a")
        await pending
        assert cache.cached(b"h") is None  # so the next request reads the new state

    asyncio.run(go())


def test_a_request_after_a_revoke_does_not_join_an_older_fetch() -> None:
    async def go() -> None:
        cache, db, _ = make()
        older = asyncio.ensure_future(cache.get(b"h"))
        await asyncio.sleep(0)  # that fetch read the row before the change
        db.rows[b"h"] = record(key_status="revoked")
        cache.invalidate(kind="key", ident="a")
        newer = await cache.get(b"h")
        await older
        assert newer is not None and newer.key_status == "revoked"

    asyncio.run(go())


def test_authz_answers_503_when_the_key_store_is_down() -> None:
    """Unavailable becomes the retryable 503 authorization_unavailable denial (not the 500 of
    an unexpected error), counted as outcome "unavailable" and not as a bug."""

    async def fetch(key_hash: bytes) -> KeyRecord | None:
        raise Unavailable("PostgreSQL", "connection refused")

    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    service = AuthorizationService(Authorizer(cache=KeyCache(fetch, ttl=1.0), metrics=metrics))
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.headers["authorization"] = f"Bearer {keys.generate().plaintext}"
    http.path, http.method = "/v1/models", "GET"
    response = asyncio.run(service.Check(request, None))
    assert response.status.code == 7  # PERMISSION_DENIED: never Envoy's pass
    assert response.denied_response.status.code == 503
    error = json.loads(response.denied_response.body)["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "authorization_unavailable")
    metrics.flush()  # tallied in process until then
    samples = {
        (s.name, tuple(s.labels.values())): s.value for m in registry.collect() for s in m.samples
    }
    assert samples[("crosslogic_authz_decisions_total", ("unavailable",))] == 1
    assert not any(name == "crosslogic_unexpected_errors_total" for name, _ in samples)
