"""One ext_authz process: Postgres pool, caches, gRPC server on a shared port."""

from __future__ import annotations

import asyncio
import contextlib

from envoy.service.auth.v3 import external_auth_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.db.connection import create_pool
from crosslogic.extauthz.service import AuthorizationService, AuthzMetrics, refresh_catalog
from crosslogic.extauthz.store import KeyCache, PostgresKeys
from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.settings import Settings


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    pool = await create_pool(settings, min_size=1, max_size=4)
    store = PostgresKeys(pool)
    service = AuthorizationService(
        cache=KeyCache(store.fetch_key, ttl=settings.key_cache_ttl),
        metrics=AuthzMetrics(registry),
        default_rpm=settings.default_key_rpm,
    )
    service.catalog = await store.fetch_catalog()
    refresher = asyncio.create_task(refresh_catalog(service, store, every=2.0))
    server = new_server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
    try:
        await serve_until_signalled(
            server, host=settings.server_host, port=settings.extauthz_port, tasks=(refresher,)
        )
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await pool.close()
