"""The xDS service's metrics and replica view, without Envoy or Postgres: NACKs counted with
Envoy's last good version kept, the apply time from a noticed change to the ACK, the fleet
census, identical versions on every replica, and a bootstrap that lists every replica."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest
import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry, Gauge

from crosslogic.envoy_config import render
from crosslogic.settings import load
from crosslogic.xds.census import FleetGauge, tally
from crosslogic.xds.main import RegistryChanges
from crosslogic.xds.server import AggregatedDiscovery, SnapshotCache, XdsMetrics, _TypeState
from crosslogic.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, ModelEntry, NodeEntry, build

MODELS = [ModelEntry(id=1, name="a"), ModelEntry(id=2, name="b")]
NODE = NodeEntry(id="n1", model_id=1, ip="10.0.0.1", port=8000)
LATE = NodeEntry(id="n2", model_id=1, ip="10.0.0.2", port=8000)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stream:
    """One ADS stream's state, driven through the servicer's pure request/response path."""

    def __init__(self, cache: SnapshotCache, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.ads = AggregatedDiscovery(cache, XdsMetrics(self.registry), clock=clock)
        self.states = {CLUSTER_TYPE: _TypeState(), ENDPOINT_TYPE: _TypeState()}

    def ask(self, **fields: object) -> discovery_pb2.DiscoveryResponse | None:
        request = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT_TYPE, **fields)  # type: ignore[arg-type]
        self.ads._on_request(request, self.states)
        return self.ads._response_if_due(ENDPOINT_TYPE, self.states[ENDPOINT_TYPE])

    def push(self) -> discovery_pb2.DiscoveryResponse | None:
        """What the stream sends when the snapshot changes (no request in between)."""
        return self.ads._response_if_due(ENDPOINT_TYPE, self.states[ENDPOINT_TYPE])

    def ack(self, response: discovery_pb2.DiscoveryResponse) -> None:
        assert (
            self.ask(
                resource_names=["model_1"],
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
            is None
        )

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def test_a_nack_is_counted_and_logged_and_envoy_keeps_its_last_good_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        cache = SnapshotCache(build(MODELS, [NODE]))
        stream = Stream(cache, Clock())
        good = stream.ask(resource_names=["model_1"])
        assert good is not None
        stream.ack(good)
        cache.publish(build(MODELS, [NODE, LATE]))
        bad = stream.push()
        assert bad is not None and bad.version_info != good.version_info
        with caplog.at_level(logging.ERROR, logger="crosslogic.xds.server"):
            again = stream.ask(
                resource_names=["model_1"],
                version_info=good.version_info,  # what Envoy still runs
                response_nonce=bad.nonce,
                error_detail=status_pb2.Status(code=13, message="bad endpoint"),
            )
        assert again is None  # not resent until the snapshot changes
        assert stream.value("crosslogic_xds_nacks_total", type="eds") == 1
        assert stream.value("crosslogic_xds_nacks_total", type="cds") == 0
        assert stream.value("crosslogic_xds_pushes_total", type="eds") == 2
        message = caplog.records[-1].getMessage()
        assert f"rejected eds version {bad.version_info}" in message
        assert f"keeps version {good.version_info}: bad endpoint" in message
        # a rejected push is not an applied one
        assert stream.value("control_plane_config_apply_seconds_count", type="eds") is None

    asyncio.run(scenario())


def test_the_apply_time_runs_from_the_noticed_change_to_envoys_ack() -> None:
    async def scenario() -> None:
        clock = Clock()
        cache = SnapshotCache(build(MODELS, [NODE]))
        stream = Stream(cache, clock)
        first = stream.ask(resource_names=["model_1"])
        assert first is not None
        clock.now += 30
        stream.ack(first)  # a stream's first push times nothing (Envoy starting, a failover)
        assert stream.value("control_plane_config_apply_seconds_count", type="eds") is None

        cache.publish(build(MODELS, [NODE, LATE]), noticed_at=clock.now)
        clock.now += 0.02
        pushed = stream.push()
        assert pushed is not None
        clock.now += 0.03
        stream.ack(pushed)
        assert stream.value("control_plane_config_apply_seconds_count", type="eds") == 1
        assert stream.value("control_plane_config_apply_seconds_sum", type="eds") == (
            pytest.approx(0.05)
        )
        # an ACK of nothing new observes nothing
        stream.ack(pushed)
        assert stream.value("control_plane_config_apply_seconds_count", type="eds") == 1

    asyncio.run(scenario())


def test_changes_remember_when_the_first_notify_since_the_last_read_came() -> None:
    async def scenario() -> None:
        clock = Clock()
        changes = RegistryChanges(clock=clock)
        assert changes.take() is None
        changes.notify(object(), 1, "crosslogic_nodes", "")
        clock.now += 1
        changes.notify()
        await asyncio.wait_for(changes.wait(at_most=60), timeout=5)  # woken, not timed out
        assert changes.take() == 100.0
        assert changes.take() is None

    asyncio.run(scenario())


def test_weight_changes_wake_the_follower_at_most_once_per_gap() -> None:
    async def scenario() -> None:
        changes = RegistryChanges(weight_gap=0.2)  # the real clock: call_later uses it
        changes.take()  # a read just happened
        started = time.monotonic()
        for _ in range(50):  # a burst of heartbeats that moved weights
            changes.notify(object(), 1, "crosslogic_nodes", "weights")
        await asyncio.wait_for(changes.wait(at_most=60), timeout=5)
        assert time.monotonic() - started >= 0.19  # held back until the gap passed
        assert changes.take() is not None
        changes.notify(object(), 1, "crosslogic_nodes", "")  # a registry change: at once
        await asyncio.wait_for(changes.wait(at_most=60), timeout=0.1)

    asyncio.run(scenario())


def test_every_replica_publishes_the_same_versions_whatever_order_it_read() -> None:
    nodes = [
        NodeEntry(id=f"n{i}", model_id=1 + i % 2, ip=f"10.0.0.{i}", port=8000) for i in range(20)
    ]
    shuffled = random.Random(7).sample(nodes, len(nodes))
    one, other = build(MODELS, nodes), build(list(reversed(MODELS)), shuffled)
    assert one.versions == other.versions
    assert SnapshotCache(one).publish(other) is False  # nothing new to push


def test_the_census_counts_by_model_region_and_state_and_zeroes_the_gone() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("control_plane_active_nodes", "", ["model", "region", "state"], registry=registry)
    fleet = FleetGauge(gauge)
    fleet.show(tally([("a", "eu", "active", 2), ("a", "us", "draining", 1)]))
    fleet.show(tally([("a", "eu", "active", 1), ("a", "eu", "unhealthy", 1)]))

    def nodes(region: str, state: str) -> float | None:
        return registry.get_sample_value(
            "control_plane_active_nodes", {"model": "a", "region": region, "state": state}
        )

    assert (nodes("eu", "active"), nodes("eu", "unhealthy"), nodes("us", "draining")) == (1, 1, 0)


def test_the_bootstrap_lists_every_xds_replica() -> None:
    settings = load({"XDS_HOST": "control-plane", "XDS_PORT": "7000", "XDS_REPLICAS": "3"})
    config = yaml.safe_load(render(settings, boot_id="0" * 16))
    xds = next(c for c in config["static_resources"]["clusters"] if c["name"] == "xds")
    endpoints = [
        e["endpoint"]["address"]["socket_address"]
        for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [{"address": "control-plane", "port_value": p} for p in (7000, 7001, 7002)]
    assert xds["health_checks"], "a dead replica must be skipped, not retried forever"
    ads = config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    assert ads["cluster_name"] == "xds" and ads["retry_policy"]["retry_back_off"]
