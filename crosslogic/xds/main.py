"""The xDS process: follow the node registry, publish snapshots, serve ADS.

The registry is re-read when the admin API announces a change (LISTEN/NOTIFY) and at least
every ``XDS_POLL_INTERVAL`` (that is how a node whose heartbeats stopped drops out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.contracts import channels
from crosslogic.db.connection import connect, create_pool
from crosslogic.errors import Unavailable
from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.settings import Settings
from crosslogic.xds.registry import NodeRegistry
from crosslogic.xds.server import AggregatedDiscovery, SnapshotCache, XdsMetrics
from crosslogic.xds.snapshot import build

log = logging.getLogger(__name__)


async def follow_registry(
    registry: NodeRegistry,
    cache: SnapshotCache,
    metrics: XdsMetrics,
    *,
    every: float,
    wake: asyncio.Event,
) -> None:
    while True:
        try:
            models, nodes = await registry.read()
            snapshot = build(models, nodes)
            if cache.publish(snapshot):
                log.info(
                    "published snapshot %s: %s", snapshot.versions, dict(snapshot.nodes_per_cluster)
                )
            metrics.active_nodes.set(len(nodes))
        except Unavailable as exc:
            log.warning("registry read failed, Envoy keeps the last snapshot: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=every)
        wake.clear()


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    pool = await create_pool(settings, min_size=1, max_size=2)
    nodes_db = NodeRegistry(pool, heartbeat_timeout=settings.node_heartbeat_timeout)
    metrics = XdsMetrics(registry)
    models, nodes = await nodes_db.read()
    cache = SnapshotCache(build(models, nodes))
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None
    try:
        listener = await connect(settings)
        await listener.add_listener(channels.NODES, lambda *_: wake.set())
    except Unavailable as exc:
        log.warning("no LISTEN connection, polling only: %s", exc)
    follower = asyncio.create_task(
        follow_registry(nodes_db, cache, metrics, every=settings.xds_poll_interval, wake=wake),
        name="follow-registry",
    )
    server = new_server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
        AggregatedDiscovery(cache, metrics), server
    )
    try:
        await serve_until_signalled(
            server, host=settings.server_host, port=settings.xds_port, tasks=(follower,)
        )
    finally:
        if listener is not None:
            await listener.close()
        await pool.close()
