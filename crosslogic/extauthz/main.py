"""One ext_authz process: Postgres pool, caches, and the gRPC or HTTP server
(EXTAUTHZ_PROTOCOL) on a shared port."""

from __future__ import annotations

import asyncio
import contextlib

from envoy.service.auth.v3 import external_auth_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.db.budget import application_name
from crosslogic.db.connection import create_pool
from crosslogic.extauthz.authorizer import Authorizer, AuthzMetrics
from crosslogic.extauthz.http_server import serve_http
from crosslogic.extauthz.invalidation import flush_last_used, follow_changes, refresh_catalog
from crosslogic.extauthz.service import AuthorizationService
from crosslogic.extauthz.store import KeyCache, PostgresKeys
from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.journal.writer import AdmissionWriter, JournalMetrics
from crosslogic.ratelimit.runtime import open_limiter
from crosslogic.redis_client import open_redis
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    # the primary, never DB_READ_HOST: a key loaded from a lagging replica could be one
    # revoked a moment ago, brought back into the cache after the NOTIFY dropped it
    pool = await create_pool(
        settings, max_size=settings.extauthz_db_pool, application_name=application_name("extauthz")
    )
    store = PostgresKeys(pool)
    cache = KeyCache(store.fetch_key, ttl=settings.key_cache_ttl, stale_for=settings.key_stale_for)
    limits = (
        await open_limiter(settings, registry, holder=application_name("extauthz", "limits"))
        if settings.ratelimit_at == "authz"
        else None
    )
    # the journal shares the limiter's connection when there is one: both commands of a
    # request then leave in one write
    redis = (
        limits.redis if limits else open_redis(settings, timeout=settings.ratelimit_redis_timeout)
    )
    authorizer = Authorizer(
        cache=cache,
        metrics=AuthzMetrics(registry),
        limiter=limits.limiter if limits else None,
        journal=AdmissionWriter(redis, JournalMetrics(registry)),
    )
    authorizer.catalog = await store.fetch_catalog()
    authorizer.regions = await store.fetch_regions()
    tasks = (
        *((limits.task,) if limits else ()),
        asyncio.create_task(refresh_catalog(authorizer, store, every=2.0), name="catalog"),
        asyncio.create_task(follow_changes(settings, cache), name="key-changes"),
        asyncio.create_task(
            flush_last_used(cache, store, every=settings.key_last_used_flush), name="last-used"
        ),
    )
    host, port = settings.server_host, settings.extauthz_port
    try:
        if settings.extauthz_protocol == "http":
            await serve_http(authorizer, host=host, port=port, tasks=tasks)
        else:
            server = new_server()
            external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
                AuthorizationService(authorizer), server
            )
            await serve_until_signalled(server, host=host, port=port, tasks=tasks)
    finally:
        if limits is not None:
            await limits.close()
        else:
            redis.close()
        # the last uses of this process's life are not lost on a clean stop
        with contextlib.suppress(Exception):
            await store.record_last_used(cache.take_used())
        await pool.close()
