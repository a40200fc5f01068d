"""The xDS snapshot, pure: models and live nodes -> Envoy clusters and endpoints.

A snapshot is an immutable value, checked for consistency before it is published; its
versions are content hashes, so an unchanged registry publishes nothing new.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from crosslogic.contracts.routing import Model

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


# a model gets the cluster named by the routing contract: the header ext_authz sets picks it
ModelEntry = Model


@dataclass(frozen=True)
class NodeEntry:
    id: str
    model_id: int
    ip: str
    port: int
    draining: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Resources by type URL and name, with one version per type."""

    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, str]
    nodes_per_cluster: Mapping[str, int] = field(default_factory=dict)

    def consistent(self) -> bool:
        """Every cluster has its load assignment (Envoy would wait on a missing one forever)."""
        return set(self.resources[CLUSTER_TYPE]) == set(self.resources[ENDPOINT_TYPE])


# vLLM (uvicorn) closes a connection idle for 5 s. Envoy closes its own after 4 s, so that
# it never sends a request on a connection the node is closing at that moment (a reset
# after the request was sent, which is not safe to retry: a 503 for the client).
NODE_HTTP = http_protocol_options_pb2.HttpProtocolOptions(
    common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
        idle_timeout=duration_pb2.Duration(seconds=4)
    ),
    explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http_protocol_options=protocol_pb2.Http1ProtocolOptions()
    ),
)


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _stat_name(model: str) -> str:
    return "model_" + re.sub(r"[^A-Za-z0-9_-]", "_", model)


def cluster_for(model: ModelEntry) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=model.cluster,
        alt_stat_name=_stat_name(model.name),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        connect_timeout=_seconds(1),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _pack(NODE_HTTP)
        },
        # the node with the fewest requests in flight: generations vary widely in length
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        # a node removed from EDS (an operator's removal, a finished drain) that still passes
        # health checks would otherwise keep receiving traffic
        ignore_health_on_host_removal=True,
        health_checks=[
            health_check_pb2.HealthCheck(
                timeout=_seconds(1),
                interval=_seconds(1),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
                healthy_threshold=wrappers_pb2.UInt32Value(value=1),
                http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path="/health"),
            )
        ],
        # A node that died stays in the pool until its health checks fail (2 s) or it
        # re-registers; meanwhile least-request keeps choosing it (no requests in flight),
        # so retries of connect failures land on it again. Two local-origin failures in a
        # row (connect refused, reset) eject it at once.
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            split_external_local_origin_errors=True,
            consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=2),
            enforcing_consecutive_local_origin_failure=wrappers_pb2.UInt32Value(value=100),
            # the gateway-error (5xx) detector stays off: a node's own 503 is an answer
            enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
            enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
            enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
            interval=_seconds(1),
            base_ejection_time=_seconds(5),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=50),
        ),
        # generations are long-lived: Envoy's default of 1024 concurrent requests is too low
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=wrappers_pb2.UInt32Value(value=100_000),
                    max_pending_requests=wrappers_pb2.UInt32Value(value=100_000),
                    max_requests=wrappers_pb2.UInt32Value(value=100_000),
                )
            ]
        ),
    )


def load_assignment(cluster: str, nodes: Iterable[NodeEntry]) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=node.ip, port_value=node.port)
                ),
                hostname=node.id,
            ),
            health_status=health_check_pb2.DRAINING if node.draining else health_check_pb2.UNKNOWN,
        )
        for node in sorted(nodes, key=lambda n: n.id)
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _version(resources: Mapping[str, any_pb2.Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(name.encode())
        digest.update(resources[name].SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def build(models: Iterable[ModelEntry], nodes: Iterable[NodeEntry]) -> Snapshot:
    models = list(models)
    by_model: dict[int, list[NodeEntry]] = {m.id: [] for m in models}
    for node in nodes:
        if node.model_id in by_model:
            by_model[node.model_id].append(node)
    clusters = {m.cluster: _pack(cluster_for(m)) for m in models}
    endpoints = {m.cluster: _pack(load_assignment(m.cluster, by_model[m.id])) for m in models}
    return Snapshot(
        resources={CLUSTER_TYPE: clusters, ENDPOINT_TYPE: endpoints},
        versions={CLUSTER_TYPE: _version(clusters), ENDPOINT_TYPE: _version(endpoints)},
        nodes_per_cluster={m.cluster: len(by_model[m.id]) for m in models},
    )
