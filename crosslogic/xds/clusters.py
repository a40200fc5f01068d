"""A model's Envoy clusters, pure: how each scheduling strategy maps onto Envoy.

Every cluster of a model shares the node connection settings, health checks, outlier
detection and circuit breakers below, and sets ``ignore_health_on_host_removal``: a node
removed from EDS leaves the pool at once, even while it still passes health checks (Envoy
otherwise keeps sending it traffic). The strategy (``models.lb_strategy``) picks:

======================  =================  ==============================================
strategy                Envoy lb_policy    endpoint weights / hash
======================  =================  ==============================================
``least_loaded``        LEAST_REQUEST      weights from reported load (``weights``): they
                                           bias Envoy's choice among its two picks
``round_robin``         ROUND_ROBIN        equal
``health_weighted``     ROUND_ROBIN        weights from the health score (weighted RR)
``random``              RANDOM             equal
``prefix_affinity``     MAGLEV             equal; the route hashes the header ext_authz
                                           sets from the prompt's first characters, and
                                           ``hash_balance_factor`` bounds a node's load to
                                           1.5x the average (then the next node is used)
======================  =================  ==============================================
"""

from __future__ import annotations

import re

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.mutation_rules.v3 import (
    mutation_rules_pb2,
)
from envoy.config.core.v3 import config_source_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from crosslogic.contracts.routing import (
    HEALTH_WEIGHTED,
    LEAST_LOADED,
    PREFIX_AFFINITY,
    PREFIX_HASH_HEADER,
    RANDOM,
    ROUND_ROBIN,
)

_POLICY = {
    LEAST_LOADED: cluster_pb2.Cluster.LEAST_REQUEST,
    ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    HEALTH_WEIGHTED: cluster_pb2.Cluster.ROUND_ROBIN,
    RANDOM: cluster_pb2.Cluster.RANDOM,
    PREFIX_AFFINITY: cluster_pb2.Cluster.MAGLEV,
}
# bounded load for prefix affinity: no node takes more than 1.5x the average of requests in
# flight; past it the hash moves on to the next node (a cold prefix cache beats a queue)
HASH_BALANCE_FACTOR = 150


def lb_policy(strategy: str) -> cluster_pb2.Cluster.LbPolicy.ValueType:
    """The Envoy policy of a strategy (an unknown one: the default, least-loaded)."""
    return _POLICY.get(strategy, cluster_pb2.Cluster.LEAST_REQUEST)


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


def _hashing_node_http() -> http_protocol_options_pb2.HttpProtocolOptions:
    """NODE_HTTP plus an upstream filter that drops the prefix-hash header. The route cannot
    drop it (its request_headers_to_remove runs before the load balancer hashes, and the hash
    would then be empty); upstream filters run once the node is chosen."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.CopyFrom(NODE_HTTP)
    strip = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[mutation_rules_pb2.HeaderMutation(remove=PREFIX_HASH_HEADER)]
        )
    )
    options.http_filters.add(name="envoy.filters.http.header_mutation").typed_config.Pack(
        strip, deterministic=True
    )
    codec = options.http_filters.add(name="envoy.filters.http.upstream_codec")
    codec.typed_config.Pack(upstream_codec_pb2.UpstreamCodec(), deterministic=True)
    return options


HASHING_NODE_HTTP = _hashing_node_http()


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def stat_name(model: str, suffix: str = "") -> str:
    """A cluster's name in Envoy's stats: the model's name (ids mean nothing on a dashboard)."""
    return "model_" + re.sub(r"[^A-Za-z0-9_-]", "_", model) + suffix


def cluster_for(
    name: str, *, stat: str, strategy: str, strict: bool = False
) -> cluster_pb2.Cluster:
    """A model's cluster; ``strict``: one region's nodes only (no panic routing: below)."""
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        connect_timeout=_seconds(1),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(
                HASHING_NODE_HTTP if strategy == PREFIX_AFFINITY else NODE_HTTP
            )
        },
        lb_policy=lb_policy(strategy),
        # a node withdrawn from EDS gets no new request even if it still answers /health
        ignore_health_on_host_removal=True,
        health_checks=[
            health_check_pb2.HealthCheck(
                timeout=_seconds(1),
                interval=_seconds(1),
                # Envoy's default for a cluster that has had no traffic yet is 60 s, and the
                # next check is scheduled when the last one ends: a cluster (re)created by a
                # strategy change, or a region's cluster kept for failover, would otherwise
                # notice a dead node a minute late
                no_traffic_interval=_seconds(1),
                unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
                healthy_threshold=wrappers_pb2.UInt32Value(value=1),
                http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path="/health"),
            )
        ],
        # A node that died stays in the pool until its health checks fail (2 s) or it
        # re-registers; meanwhile least-request keeps choosing it (no requests in flight),
        # and a hash keeps mapping to it, so retries of connect failures land on it again.
        # Two local-origin failures in a row (connect refused, reset) eject it at once.
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
    if strict:
        # Envoy's panic mode (under 50 % healthy) sends requests to unhealthy nodes too: in
        # a region's strict cluster, a region with no healthy node must answer 503 at once
        # rather than wait on a frozen node (still in the region, but never an answer)
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    if strategy == PREFIX_AFFINITY:
        cluster.common_lb_config.consistent_hashing_lb_config.hash_balance_factor.value = (
            HASH_BALANCE_FACTOR
        )
    return cluster


def pack(message: Message) -> any_pb2.Any:
    """``message`` in an Any, serialized deterministically: map fields (an endpoint's
    metadata) are otherwise written in the process's hash order, and two xDS replicas would
    derive different versions from the same content."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed
