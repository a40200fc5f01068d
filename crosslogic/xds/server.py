"""Aggregated Discovery Service (State of the World) over the published snapshot.

Per stream and type we remember the nonce we last sent and the resource names Envoy asked
for. A request carrying an older nonce is ignored entirely (names included): acting on it can
leave a new cluster warming forever. A NACK keeps Envoy on its last good config; we log it and
send again only when the snapshot changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot

log = logging.getLogger(__name__)


class SnapshotCache:
    """Holds the current snapshot and wakes every stream when a new one is published."""

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self._changed = asyncio.Event()

    def publish(self, snapshot: Snapshot) -> bool:
        if not snapshot.consistent():
            raise ValueError("inconsistent snapshot: clusters without load assignments")
        if snapshot.versions == self.current.versions:
            return False
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


class XdsMetrics:
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
        self.streams = Gauge(
            "crosslogic_xds_streams",
            "connected ADS streams",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.active_nodes = Gauge(
            "control_plane_active_nodes",
            "GPU nodes currently receiving traffic",
            registry=registry,
            # one xDS process: its latest value, never a dead predecessor's
            multiprocess_mode="mostrecent",
        )


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache, metrics: XdsMetrics) -> None:
        self._cache = cache
        self._metrics = metrics
        self._nonces = itertools.count(1)

    async def StreamAggregatedResources(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        states = {CLUSTER_TYPE: _TypeState(), ENDPOINT_TYPE: _TypeState()}
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
                for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE):  # clusters before endpoints
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
                "Envoy rejected %s version %s: %s",
                _short(request.type_url),
                state.sent_version,
                request.error_detail.message,
            )
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
        version = snapshot.versions[type_url]
        available = snapshot.resources[type_url]
        names = frozenset(available) if state.wildcard else frozenset(state.names & set(available))
        if version == state.sent_version and names == state.sent_names:
            return None
        state.nonce = str(next(self._nonces))
        state.sent_version, state.sent_names = version, names
        self._metrics.pushes.labels(_short(type_url)).inc()
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[available[name] for name in sorted(names)],
        )


def _short(type_url: str) -> str:
    return "cds" if type_url == CLUSTER_TYPE else "eds"
