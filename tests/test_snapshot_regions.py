"""The snapshot's clusters per strategy and region, pure: lb policy, weights, priorities,
strict clusters, and a consistent, content-versioned whole."""

from __future__ import annotations

import os
import subprocess
import sys

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from crosslogic.contracts import routing
from crosslogic.xds.clusters import HASH_BALANCE_FACTOR
from crosslogic.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    OVERPROVISIONING,
    ModelEntry,
    NodeEntry,
    Snapshot,
    build,
)

REGIONS = ("eu", "us")
NODES = [
    NodeEntry(id="eu1", model_id=1, ip="10.0.0.1", port=1, region="eu", weight=700),
    NodeEntry(id="eu2", model_id=1, ip="10.0.0.2", port=1, region="eu", weight=300),
    NodeEntry(id="us1", model_id=1, ip="10.0.0.3", port=1, region="us"),
]


def cluster(snap: Snapshot, name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster()
    snap.resources[CLUSTER_TYPE][name].Unpack(c)
    return c


def priorities(snap: Snapshot, name: str) -> list[list[tuple[str, int]]]:
    cla = endpoint_pb2.ClusterLoadAssignment()
    snap.resources[ENDPOINT_TYPE][name].Unpack(cla)
    levels = sorted(cla.endpoints, key=lambda level: level.priority)
    assert [level.priority for level in levels] == list(range(len(levels)))
    return [
        [(e.endpoint.hostname, e.load_balancing_weight.value) for e in level.lb_endpoints]
        for level in levels
    ]


def test_each_strategy_maps_onto_its_envoy_policy() -> None:
    expected = {
        "least_loaded": cluster_pb2.Cluster.LEAST_REQUEST,
        "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
        "health_weighted": cluster_pb2.Cluster.ROUND_ROBIN,
        "random": cluster_pb2.Cluster.RANDOM,
        "prefix_affinity": cluster_pb2.Cluster.MAGLEV,
    }
    assert set(expected) == set(routing.STRATEGIES)
    for strategy, policy in expected.items():
        snap = build([ModelEntry(id=1, name="m", strategy=strategy, regions=REGIONS)], NODES)
        for name in snap.resources[CLUSTER_TYPE]:
            c = cluster(snap, name)
            assert c.lb_policy == policy, (strategy, name)
            assert c.ignore_health_on_host_removal
            # a cluster without traffic yet (re-created, or kept for failover) still checks
            # its nodes every second, not Envoy's default minute
            assert c.health_checks[0].no_traffic_interval.seconds == 1
            factor = c.common_lb_config.consistent_hashing_lb_config.hash_balance_factor.value
            assert factor == (HASH_BALANCE_FACTOR if strategy == "prefix_affinity" else 0)


def test_regions_get_a_preferred_and_a_strict_cluster_per_model() -> None:
    snap = build([ModelEntry(id=1, name="m", regions=REGIONS)], NODES)
    assert snap.consistent()
    assert set(snap.resources[CLUSTER_TYPE]) == {
        "model_1",
        "model_1_in_eu",
        "model_1_only_eu",
        "model_1_in_us",
        "model_1_only_us",
    }
    assert priorities(snap, "model_1") == [[("eu1", 700), ("eu2", 300), ("us1", 1)]]
    # preferred: the region first, the others only as failover
    assert priorities(snap, "model_1_in_eu") == [[("eu1", 700), ("eu2", 300)], [("us1", 1)]]
    assert priorities(snap, "model_1_in_us") == [[("us1", 1)], [("eu1", 700), ("eu2", 300)]]
    # strict: the region only
    assert priorities(snap, "model_1_only_eu") == [[("eu1", 700), ("eu2", 300)]]
    assert priorities(snap, "model_1_only_us") == [[("us1", 1)]]
    cla = endpoint_pb2.ClusterLoadAssignment()
    snap.resources[ENDPOINT_TYPE]["model_1_in_eu"].Unpack(cla)
    assert cla.policy.overprovisioning_factor.value == OVERPROVISIONING
    assert cluster(snap, "model_1_in_eu").alt_stat_name == "model_m_in_eu"
    # strict clusters never route to unhealthy nodes (no panic mode): a 503 instead
    assert cluster(snap, "model_1_only_eu").common_lb_config.HasField("healthy_panic_threshold")
    assert cluster(snap, "model_1_only_eu").common_lb_config.healthy_panic_threshold.value == 0
    for name in ("model_1", "model_1_in_eu"):
        assert not cluster(snap, name).common_lb_config.HasField("healthy_panic_threshold")
    assert cluster(snap, "model_1").alt_stat_name == "model_m"


def test_a_region_without_nodes_fails_over_or_stays_empty() -> None:
    snap = build([ModelEntry(id=1, name="m", regions=("ap", *REGIONS))], NODES)
    assert snap.consistent()
    assert priorities(snap, "model_1_in_ap") == [[], [("eu1", 700), ("eu2", 300), ("us1", 1)]]
    assert priorities(snap, "model_1_only_ap") == [[]]


def test_versions_follow_weights_and_strategies_only_where_they_live() -> None:
    models = [ModelEntry(id=1, name="m", regions=REGIONS)]
    base = build(models, NODES)
    assert base.versions == build(models, list(reversed(NODES))).versions  # order-free
    reweighted = build(
        models, [NODES[0], NODES[1], NodeEntry(**{**NODES[2].__dict__, "weight": 9})]
    )
    assert reweighted.versions[CLUSTER_TYPE] == base.versions[CLUSTER_TYPE]  # EDS only
    assert reweighted.versions[ENDPOINT_TYPE] != base.versions[ENDPOINT_TYPE]
    hashed = build([ModelEntry(id=1, name="m", strategy="prefix_affinity", regions=REGIONS)], NODES)
    assert hashed.versions[CLUSTER_TYPE] != base.versions[CLUSTER_TYPE]
    # a strategy change re-warms the cluster in Envoy, which then waits for its endpoints:
    # they change too, so that they are pushed with it
    assert hashed.versions[ENDPOINT_TYPE] != base.versions[ENDPOINT_TYPE]


def test_only_hashing_clusters_drop_the_prefix_hash_upstream() -> None:
    """The route must keep the header for the hash; the cluster drops it before the node."""
    for strategy in routing.STRATEGIES:
        snap = build([ModelEntry(id=1, name="m", strategy=strategy)], [])
        options = http_protocol_options_pb2.HttpProtocolOptions()
        cluster(snap, "model_1").typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].Unpack(options)
        names = [f.name for f in options.http_filters]
        if strategy != "prefix_affinity":
            assert names == []  # nothing added to the common request path
            continue
        assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"]
        mutation = header_mutation_pb2.HeaderMutation()
        options.http_filters[0].typed_config.Unpack(mutation)
        assert [m.remove for m in mutation.mutations.request_mutations] == [
            routing.PREFIX_HASH_HEADER
        ]


def test_the_same_registry_has_the_same_versions_in_every_process() -> None:
    # two xDS replicas are two processes, each with its own hash seed: map fields (an
    # endpoint's metadata) must not be serialized in hash order
    code = (
        "from tests.test_snapshot_regions import NODES, REGIONS;"
        "from crosslogic.xds.snapshot import ModelEntry, build;"
        "snap = build([ModelEntry(id=1, name='m', regions=REGIONS)], NODES);"
        "print(sorted(snap.versions.items()))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3, 4)
    }
    assert len(seen) == 1, seen
