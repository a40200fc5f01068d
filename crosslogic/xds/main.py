"""The xDS process: follow the node registry, publish snapshots, serve ADS.

The registry is re-read when the admin API announces a change (LISTEN/NOTIFY; a change of a
node's weight alone at most every ``WEIGHT_PUSH_GAP``) and at least every
``XDS_POLL_INTERVAL`` (that is how a node whose heartbeats stopped drops out). Several
of these processes run side by side (``XDS_REPLICAS``), each on its own port and each
following the registry itself: Envoy lists them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable

import asyncpg
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import CollectorRegistry

from crosslogic.contracts import channels
from crosslogic.db.budget import application_name, listen_name
from crosslogic.db.connection import connect, create_pool
from crosslogic.errors import Unavailable
from crosslogic.grpc_server import new_server, serve_until_signalled
from crosslogic.settings import Settings
from crosslogic.tls import client, listener
from crosslogic.xds.census import FleetCensus, FleetGauge
from crosslogic.xds.registry import NodeRegistry
from crosslogic.xds.server import AggregatedDiscovery, SnapshotCache, XdsMetrics
from crosslogic.xds.snapshot import build
from crosslogic.xds.transport import NodeSecrets

log = logging.getLogger(__name__)


# weight-only changes (heartbeats) are taken up at most this often: with many nodes they
# would otherwise rebuild the snapshot on every heartbeat; registry changes go at once
WEIGHT_PUSH_GAP = 0.2


class RegistryChanges:
    """NOTIFYs of registry changes: each wakes the follower, and the first one since its
    last read says when the change was noticed (the start of the apply time). A weight-only
    change wakes it no sooner than ``weight_gap`` after its last read."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, weight_gap: float = WEIGHT_PUSH_GAP
    ) -> None:
        self._clock = clock
        self._gap = weight_gap
        self._event = asyncio.Event()
        self._since: float | None = None
        self._last_take = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def notify(self, *args: object) -> None:
        """A LISTEN callback: asyncpg passes connection, pid, channel and payload."""
        if len(args) > 3 and args[3] == channels.NODE_WEIGHTS:
            if self._timer is None:
                delay = max(0.0, self._last_take + self._gap - self._clock())
                self._timer = asyncio.get_running_loop().call_later(delay, self._wake)
            return
        self._wake()

    def _wake(self) -> None:
        self._timer = None
        if self._since is None:
            self._since = self._clock()
        self._event.set()

    async def wait(self, *, at_most: float) -> None:
        """Until a change is notified, or ``at_most`` seconds (the poll interval)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=at_most)

    def take(self) -> float | None:
        """When the first change since the last ``take`` was noticed (None: none was); the
        read that follows covers every change so far, a pending weight wake-up included."""
        since, self._since = self._since, None
        self._event.clear()
        self._last_take = self._clock()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return since


class NodeSecretSource:
    """The SDS secrets for TLS nodes (crosslogic.tls.client), read at every snapshot (a
    renewal or rotation is pushed within a poll); a failure to read keeps the last good
    ones, so that TLS nodes stay reachable."""

    def __init__(self, settings: Settings) -> None:
        self._folder = listener.ca_dir(settings)
        self._lifetime = datetime.timedelta(seconds=settings.node_client_cert_lifetime)
        self._trusted = settings.node_ca_file
        self._last: NodeSecrets | None = None

    def __call__(self) -> NodeSecrets | None:
        try:
            self._last = client.node_secrets(
                self._folder, lifetime=self._lifetime, trusted_ca=self._trusted
            )
        except (OSError, ValueError) as exc:
            log.error("cannot read the TLS secrets for nodes (%s): keeping the last ones", exc)
        return self._last


async def follow_registry(
    registry: NodeRegistry,
    cache: SnapshotCache,
    metrics: XdsMetrics,
    *,
    every: float,
    changes: RegistryChanges,
    census: FleetCensus | None = None,
    clock: Callable[[], float] = time.monotonic,
    secrets: Callable[[], NodeSecrets | None] = lambda: None,
) -> None:
    fleet = FleetGauge(metrics.active_nodes)
    while True:
        noticed = changes.take()
        # a change no NOTIFY announced (heartbeats stopped) is noticed by this read
        started = clock()
        try:
            models, nodes = await registry.read()
            snapshot = build(models, nodes, secrets=secrets())
            if cache.publish(snapshot, noticed_at=started if noticed is None else noticed):
                log.info(
                    "published snapshot %s: %s", snapshot.versions, dict(snapshot.nodes_per_cluster)
                )
            if census is not None:
                fleet.show(await census.count())
        except Unavailable as exc:
            log.warning("registry read failed, Envoy keeps the last snapshot: %s", exc)
        await changes.wait(at_most=every)


async def run(settings: Settings, registry: CollectorRegistry) -> None:
    # the primary: a NOTIFY wakes this read, and a replica might not have the change yet (a
    # removed node would be pushed back to Envoy until the next poll)
    name = application_name("xds")
    pool = await create_pool(settings, max_size=settings.xds_db_pool, application_name=name)
    nodes_db = NodeRegistry(pool, heartbeat_timeout=settings.node_heartbeat_timeout)
    census = FleetCensus(pool, heartbeat_timeout=settings.node_heartbeat_timeout)
    metrics = XdsMetrics(registry)
    secrets = NodeSecretSource(settings)
    models, nodes = await nodes_db.read()
    cache = SnapshotCache(build(models, nodes, secrets=secrets()))
    changes = RegistryChanges()
    listener: asyncpg.Connection | None = None
    try:
        listener = await connect(settings, application_name=listen_name(name))
        await listener.add_listener(channels.NODES, changes.notify)
    except Unavailable as exc:
        log.warning("no LISTEN connection, polling only: %s", exc)
    follower = asyncio.create_task(
        follow_registry(
            nodes_db,
            cache,
            metrics,
            every=settings.xds_poll_interval,
            changes=changes,
            census=census,
            secrets=secrets,
        ),
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
