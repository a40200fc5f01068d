"""Aggregated Discovery Service (State of the World) over the published snapshot.

Per stream and type we remember the nonce we last sent and the resource names Envoy asked
for. A request carrying an older nonce is ignored entirely (names included): acting on it can
leave a new cluster warming forever. A NACK keeps Envoy on its last good config; we log it,
count it and send again only when the snapshot changes.

Every xDS replica builds the same snapshot from the same registry under the same
content-hash versions, so a stream that moves to another replica gets what Envoy has.
The time from the change a snapshot was published for to Envoy's ACK of it is observed
per type (``control_plane_config_apply_seconds``), on streams that were already up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crosslogic.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot
from crosslogic.xds.transport import SECRET_TYPE

# clusters before endpoints; secrets (SDS: what clusters of TLS nodes name) last
TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE)
_SHORT = {CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds", SECRET_TYPE: "sds"}

log = logging.getLogger(__name__)


class SnapshotCache:
    """Holds the current snapshot and wakes every stream when a new one is published;
    ``changed_at`` says, per type, when the change behind its current version was noticed
    (the clock of :class:`AggregatedDiscovery`)."""

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self.changed_at: dict[str, float] = {}
        self._changed = asyncio.Event()

    def publish(self, snapshot: Snapshot, *, noticed_at: float | None = None) -> bool:
        """Make ``snapshot`` current unless it has the current versions (False then);
        ``noticed_at``: when the registry change it carries was noticed (a NOTIFY)."""
        if not snapshot.consistent():
            raise ValueError(
                "inconsistent snapshot: clusters without load assignments, or without the "
                "secrets of their TLS nodes"
            )
        if snapshot.versions == self.current.versions:
            return False
        for type_url, version in snapshot.versions.items():
            if version != self.current.versions.get(type_url):
                if noticed_at is None:
                    self.changed_at.pop(type_url, None)
                else:
                    self.changed_at[type_url] = noticed_at
        self.current = snapshot
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def wait_changed(self) -> Coroutine[Any, Any, bool]:
        """Wait for the next publish after NOW: the event is taken at the call, not when the
        returned coroutine first runs (a publish in between would otherwise be missed)."""
        return self._changed.wait()


@dataclass
class _TypeState:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    subscribed: bool = False
    nonce: str = ""
    sent_version: str = ""
    sent_names: frozenset[str] = frozenset()
    # when the oldest change sent on this stream and not yet ACKed was noticed
    unacked_since: float | None = None


# a registry change reaches Envoy in tens of milliseconds; seconds mean a slow stream
APPLY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class XdsMetrics:
    """The xDS service's metrics, created against ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushes = Counter(
            "crosslogic_xds_pushes_total", "xDS responses sent", ["type"], registry=registry
        )
        self.nacks = Counter(
            "crosslogic_xds_nacks_total",
            "xDS responses Envoy rejected",
            ["type"],
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "control_plane_config_apply_seconds",
            "from a registry change being noticed to Envoy's ACK of the config carrying it",
            ["type"],
            buckets=APPLY_BUCKETS,
            registry=registry,
        )
        for short in _SHORT.values():  # present at 0 before the first push or NACK
            self.pushes.labels(short)
            self.nacks.labels(short)
        self.streams = Gauge(
            "crosslogic_xds_streams",
            "connected ADS streams",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.active_nodes = Gauge(
            "control_plane_active_nodes",
            "GPU nodes in the registry by model, region and state (active, draining, "
            "unhealthy: heartbeats stopped)",
            ["model", "region", "state"],
            registry=registry,
            # every replica counts the same registry: the latest value, never a dead one's
            multiprocess_mode="mostrecent",
        )


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        cache: SnapshotCache,
        metrics: XdsMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._clock = clock
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        states = {type_url: _TypeState() for type_url in TYPES}
        self._metrics.streams.inc()
        reader = asyncio.ensure_future(anext(request_iterator, None))
        changed = asyncio.ensure_future(self._cache.wait_changed())
        try:
            while True:
                done, _ = await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    request = reader.result()
                    if request is None:
                        return
                    self._on_request(request, states)
                    reader = asyncio.ensure_future(anext(request_iterator, None))
                if changed in done:
                    changed = asyncio.ensure_future(self._cache.wait_changed())
                for type_url in TYPES:
                    response = self._response_if_due(type_url, states[type_url])
                    if response is not None:
                        await context.write(response)
        finally:
            self._metrics.streams.dec()
            for task in (reader, changed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _on_request(
        self, request: discovery_pb2.DiscoveryRequest, states: dict[str, _TypeState]
    ) -> None:
        state = states.get(request.type_url)
        if state is None:
            return  # a type we do not serve (LDS/RDS are static)
        if request.response_nonce and request.response_nonce != state.nonce:
            return  # stale: an answer to a response Envoy has since been sent a newer one of
        if request.HasField("error_detail"):
            self._metrics.nacks.labels(_short(request.type_url)).inc()
            log.error(
                "Envoy rejected %s version %s and keeps version %s: %s",
                _short(request.type_url),
                state.sent_version,
                request.version_info or "(none)",
                _reason(request.error_detail.message),
            )
        elif request.response_nonce and state.unacked_since is not None:
            self._metrics.apply_seconds.labels(_short(request.type_url)).observe(
                max(0.0, self._clock() - state.unacked_since)
            )
            state.unacked_since = None
        state.subscribed = True
        names = set(request.resource_names)
        state.wildcard = request.type_url == CLUSTER_TYPE and (not names or "*" in names)
        state.names = names

    def _response_if_due(
        self, type_url: str, state: _TypeState
    ) -> discovery_pb2.DiscoveryResponse | None:
        if not state.subscribed:
            return None
        snapshot = self._cache.current
        version = snapshot.versions.get(type_url, "")
        available = snapshot.resources.get(type_url, {})
        names = frozenset(available) if state.wildcard else frozenset(state.names & set(available))
        if version == state.sent_version and names == state.sent_names:
            return None
        since = self._cache.changed_at.get(type_url)
        # a stream that was up when the change came: a new one (Envoy starting or moving to
        # this replica) would time the outage, not the push
        if state.sent_version and version != state.sent_version and since is not None:
            pending = state.unacked_since
            state.unacked_since = since if pending is None else min(since, pending)
        state.nonce = str(next(self._nonces))
        state.sent_version, state.sent_names = version, names
        self._metrics.pushes.labels(_short(type_url)).inc()
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[available[name] for name in sorted(names)],
        )


def _reason(message: str, *, keep: int = 400) -> str:
    """Envoy's NACK text on one line: it dumps the whole rejected resource first and says
    why at the end, so the end is kept."""
    flat = " ".join(message.split())
    return flat if len(flat) <= keep else "..." + flat[-keep:]


def _short(type_url: str) -> str:
    return _SHORT.get(type_url, "eds")
