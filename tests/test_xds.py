"""Snapshot building, the ADS stream's nonce/ACK/NACK handling and the registry's error model,
without Envoy or Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry

from crosslogic.errors import Unavailable
from crosslogic.xds.main import RegistryChanges, follow_registry
from crosslogic.xds.registry import NodeRegistry, OutageCredit
from crosslogic.xds.server import AggregatedDiscovery, SnapshotCache, XdsMetrics, _TypeState
from crosslogic.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, ModelEntry, NodeEntry, build

MODELS = [ModelEntry(id=1, name="a/b"), ModelEntry(id=2, name="c")]


def test_snapshot_has_a_cluster_and_assignment_per_model() -> None:
    snap = build(
        MODELS,
        [
            NodeEntry(id="n1", model_id=1, ip="10.0.0.1", port=8000),
            NodeEntry(id="n2", model_id=1, ip="10.0.0.2", port=8000, draining=True),
            NodeEntry(id="x", model_id=99, ip="10.0.0.3", port=8000),
        ],
    )
    assert snap.consistent()
    assert set(snap.resources[CLUSTER_TYPE]) == {"model_1", "model_2"}
    cluster = cluster_pb2.Cluster()
    snap.resources[CLUSTER_TYPE]["model_1"].Unpack(cluster)
    assert cluster.alt_stat_name == "model_a_b" and cluster.type == cluster_pb2.Cluster.EDS
    cla = endpoint_pb2.ClusterLoadAssignment()
    snap.resources[ENDPOINT_TYPE]["model_1"].Unpack(cla)
    hosts = [(e.endpoint.hostname, e.health_status) for e in cla.endpoints[0].lb_endpoints]
    assert hosts == [("n1", 0), ("n2", 3)]  # UNKNOWN (active health check decides), DRAINING
    assert snap.nodes_per_cluster == {"model_1": 2, "model_2": 0}


def test_versions_are_content_hashes() -> None:
    one = build(MODELS, [])
    assert one.versions == build(MODELS, []).versions
    two = build(MODELS, [NodeEntry(id="n1", model_id=2, ip="10.0.0.1", port=1)])
    assert two.versions[CLUSTER_TYPE] == one.versions[CLUSTER_TYPE]
    assert two.versions[ENDPOINT_TYPE] != one.versions[ENDPOINT_TYPE]


def test_stale_nonces_are_ignored_and_nacks_do_not_loop() -> None:
    async def scenario() -> None:
        cache = SnapshotCache(build(MODELS, []))
        ads = AggregatedDiscovery(cache, XdsMetrics(CollectorRegistry()))
        state = _TypeState()
        states = {CLUSTER_TYPE: _TypeState(), ENDPOINT_TYPE: state}
        ads._on_request(
            discovery_pb2.DiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names=["model_1"]),
            states,
        )
        first = ads._response_if_due(ENDPOINT_TYPE, state)
        assert first is not None and len(first.resources) == 1
        # a new cluster appears: Envoy asks again, but a late request with an old nonce
        # must not change what we think Envoy wants
        cache.publish(build(MODELS, [NodeEntry(id="n", model_id=2, ip="10.0.0.9", port=1)]))
        second = ads._response_if_due(ENDPOINT_TYPE, state)
        assert second is not None
        ads._on_request(
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT_TYPE, resource_names=[], response_nonce=first.nonce
            ),
            states,
        )
        assert state.names == {"model_1"}
        # NACK of the current nonce: remembered, not resent until the snapshot changes
        ads._on_request(
            discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT_TYPE,
                resource_names=["model_1", "model_2"],
                response_nonce=second.nonce,
                version_info=first.version_info,
                error_detail=status_pb2.Status(code=13, message="bad"),
            ),
            states,
        )
        third = ads._response_if_due(ENDPOINT_TYPE, state)
        assert third is not None and len(third.resources) == 2  # new names were asked for
        assert ads._response_if_due(ENDPOINT_TYPE, state) is None

    asyncio.run(scenario())


class _RefusingPool:
    """An asyncpg pool whose server is gone: acquiring a connection is refused."""

    def acquire(self) -> _RefusingPool:
        return self

    async def __aenter__(self) -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_registry_reports_a_down_database_as_unavailable() -> None:
    registry = NodeRegistry(_RefusingPool(), heartbeat_timeout=10.0)  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as caught:
        asyncio.run(registry.read())
    assert caught.value.dependency == "PostgreSQL"


class _FlakyRegistry:
    """Fails its first read, then answers MODELS with one node; ``reads`` counts the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.read_done = asyncio.Event()

    async def read(self) -> tuple[list[ModelEntry], list[NodeEntry]]:
        self.reads += 1
        self.read_done.set()
        if self.reads == 1:
            raise Unavailable("PostgreSQL", "connection refused")
        return MODELS, [NodeEntry(id="n1", model_id=1, ip="10.0.0.1", port=8000)]


def test_a_failed_registry_read_keeps_the_last_snapshot() -> None:
    async def go() -> None:
        initial = build(MODELS, [])
        cache, registry, changes = SnapshotCache(initial), _FlakyRegistry(), RegistryChanges()
        metrics = XdsMetrics(CollectorRegistry())
        reader: Any = registry  # a NodeRegistry as far as follow_registry can tell
        follower = asyncio.create_task(
            follow_registry(reader, cache, metrics, every=60.0, changes=changes)
        )
        try:
            await asyncio.wait_for(registry.read_done.wait(), timeout=5)
            registry.read_done.clear()
            assert not follower.done()  # the failure was logged, not raised
            assert cache.current is initial
            changed = cache.wait_changed()
            changes.notify()  # as a NOTIFY from the admin API would
            await asyncio.wait_for(changed, timeout=5)
            assert cache.current.nodes_per_cluster["model_1"] == 1
        finally:
            follower.cancel()

    asyncio.run(go())


def test_a_database_outage_does_not_count_as_the_nodes_silence() -> None:
    now = [100.0]
    silence = OutageCredit(10.0, clock=lambda: now[0])
    assert silence.timeout() == 10.0
    silence.failed()  # the registry cannot be read: nor can heartbeats be stored
    now[0] = 130.0
    silence.failed()
    assert silence.timeout() == 40.0  # the first read after it already allows the outage
    silence.read()
    now[0] = 139.0  # nodes have the timeout after the outage to heartbeat again
    assert silence.timeout() == 40.0
    now[0] = 140.0
    assert silence.timeout() == 10.0
