"""The xDS snapshot, pure: models and live nodes -> Envoy clusters and endpoints.

A snapshot is an immutable value, checked for consistency before it is published; its
versions are content hashes, so an unchanged registry publishes nothing new.

Each model gets, besides its cluster of every node (``model_<id>``, used when a request
names no region), two clusters per region (``crosslogic.contracts.routing``):

* ``model_<id>_in_<region>``: the region's nodes at priority 0, every other node at
  priority 1. With an overprovisioning factor far above Envoy's 1.4, priority 0 keeps all
  traffic while it has one healthy node; only when it has none does priority 1 take over.
* ``model_<id>_only_<region>``: the region's nodes only, for keys with ``allowed_regions``:
  no healthy node there is a 503, never a node elsewhere.

Every region of the catalog gets both (a region without nodes yet still fails over), so
the number of clusters is models x (1 + 2 x regions), each health-checking its nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import any_pb2, wrappers_pb2

from crosslogic.contracts.routing import (
    LEAST_LOADED,
    model_cluster,
    preferred_cluster,
    strict_cluster,
)
from crosslogic.xds import transport
from crosslogic.xds.clusters import cluster_for, pack, stat_name
from crosslogic.xds.transport import SECRET_TYPE, NodeSecrets

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


# Priority 0 keeps every request while this share of its nodes is healthy: 1/1000 (Envoy's
# default, 1.4, spills part of the traffic as soon as one node of the region is down).
OVERPROVISIONING = 100_000
METADATA_NAMESPACE = "crosslogic"  # each endpoint's strategy and region (informative)


@dataclass(frozen=True)
class ModelEntry:
    """A model as xDS publishes it: its clusters are named by the routing contract (the header
    ext_authz sets picks one); ``regions``: the regions it gets clusters for."""

    id: int
    name: str
    strategy: str = LEAST_LOADED
    regions: tuple[str, ...] = ()

    @property
    def cluster(self) -> str:
        return model_cluster(self.id)


@dataclass(frozen=True)
class NodeEntry:
    id: str
    model_id: int
    ip: str
    port: int
    draining: bool = False
    region: str = "local"
    weight: int = 1  # EDS load_balancing_weight (crosslogic.xds.weights)
    transport: str = transport.PLAIN  # plain, tls, mtls (crosslogic.xds.transport)
    host: str = ""  # the address it registered (a host name: SNI), for tls and mtls

    @property
    def tls_pair(self) -> tuple[str, str]:
        return self.transport, self.host or self.ip


@dataclass(frozen=True)
class Snapshot:
    """Resources by type URL and name, with one version per type."""

    resources: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, str]
    nodes_per_cluster: Mapping[str, int] = field(default_factory=dict)
    needs_secrets: bool = False  # a cluster reaches a node over TLS (the SDS secrets)

    def consistent(self) -> bool:
        """Every cluster has its load assignment, and the secrets TLS nodes need are there
        (Envoy would wait on a missing one forever)."""
        if set(self.resources[CLUSTER_TYPE]) != set(self.resources[ENDPOINT_TYPE]):
            return False
        secrets = self.resources.get(SECRET_TYPE, {})
        return not self.needs_secrets or {transport.CA_SECRET, transport.CLIENT_SECRET} <= set(
            secrets
        )


def _endpoint(node: NodeEntry, *, strategy: str) -> endpoint_components_pb2.LbEndpoint:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=node.ip, port_value=node.port)
            ),
            hostname=node.id,
        ),
        health_status=health_check_pb2.DRAINING if node.draining else health_check_pb2.UNKNOWN,
        load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, node.weight)),
    )
    # Envoy re-warms a cluster whose lb_policy changed and waits (15 s) for its endpoints;
    # a State-of-the-World server sends an EDS resource only when it changed. Naming the
    # strategy here changes the endpoints with the cluster, so both are pushed together.
    endpoint.metadata.filter_metadata[METADATA_NAMESPACE].update(
        {"strategy": strategy, "region": node.region}
    )
    match = transport.endpoint_metadata(*node.tls_pair)
    if match is not None:
        endpoint.metadata.filter_metadata[transport.MATCH_NAMESPACE].CopyFrom(match)
    return endpoint


def load_assignment(
    cluster: str, *priorities: Iterable[NodeEntry], strategy: str = LEAST_LOADED
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of ``cluster``: the first group of nodes at priority 0, the next at 1..."""
    levels = [
        endpoint_components_pb2.LocalityLbEndpoints(
            priority=level,
            lb_endpoints=[
                _endpoint(n, strategy=strategy) for n in sorted(nodes, key=lambda n: n.id)
            ],
        )
        for level, nodes in enumerate(priorities)
    ]
    # an empty lower priority is dropped; priority 0 stays, even empty (priorities must
    # start at 0)
    levels = levels[:1] + [level for level in levels[1:] if level.lb_endpoints]
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster, endpoints=levels)
    if len(levels) > 1:
        assignment.policy.overprovisioning_factor.value = OVERPROVISIONING
    return assignment


def _model_resources(
    model: ModelEntry, nodes: Sequence[NodeEntry]
) -> tuple[dict[str, any_pb2.Any], dict[str, any_pb2.Any]]:
    """The clusters and load assignments of one model, by cluster name."""
    strategy = model.strategy
    assignments = {model.cluster: load_assignment(model.cluster, nodes, strategy=strategy)}
    stats = {model.cluster: stat_name(model.name)}
    strict_names = set()
    for region in sorted(set(model.regions)):
        local = [n for n in nodes if n.region == region]
        elsewhere = [n for n in nodes if n.region != region]
        preferred = preferred_cluster(model.id, region)
        strict = strict_cluster(model.id, region)
        assignments[preferred] = load_assignment(preferred, local, elsewhere, strategy=strategy)
        assignments[strict] = load_assignment(strict, local, strategy=strategy)
        stats[preferred] = stat_name(model.name, f"_in_{region}")
        stats[strict] = stat_name(model.name, f"_only_{region}")
        strict_names.add(strict)
    clusters = {}
    for name in assignments:
        cluster = cluster_for(
            name, stat=stats[name], strategy=strategy, strict=name in strict_names
        )
        # every cluster of a model holds all its nodes (the strict ones a subset): one set
        cluster.transport_socket_matches.extend(transport.socket_matches(n.tls_pair for n in nodes))
        clusters[name] = pack(cluster)
    return clusters, {name: pack(cla) for name, cla in assignments.items()}


def _version(resources: Mapping[str, any_pb2.Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(name.encode())
        digest.update(resources[name].SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def build(
    models: Iterable[ModelEntry],
    nodes: Iterable[NodeEntry],
    *,
    secrets: NodeSecrets | None = None,
) -> Snapshot:
    """The snapshot of ``models`` and their live ``nodes``; ``secrets``: what TLS nodes
    need (without them, nodes registered with tls or mtls are left out: Envoy could not
    reach them)."""
    models = list(models)
    if secrets is None:
        nodes = [n for n in nodes if n.transport == transport.PLAIN]
    by_model: dict[int, list[NodeEntry]] = {m.id: [] for m in models}
    for node in nodes:
        if node.model_id in by_model:
            by_model[node.model_id].append(node)
    clusters: dict[str, any_pb2.Any] = {}
    endpoints: dict[str, any_pb2.Any] = {}
    for m in models:
        model_clusters, model_endpoints = _model_resources(m, by_model[m.id])
        clusters.update(model_clusters)
        endpoints.update(model_endpoints)
    secret_resources = dict(transport.secret_resources(secrets))
    return Snapshot(
        resources={CLUSTER_TYPE: clusters, ENDPOINT_TYPE: endpoints, SECRET_TYPE: secret_resources},
        versions={
            CLUSTER_TYPE: _version(clusters),
            ENDPOINT_TYPE: _version(endpoints),
            SECRET_TYPE: _version(secret_resources),
        },
        nodes_per_cluster={m.cluster: len(by_model[m.id]) for m in models},
        needs_secrets=any(
            n.transport != transport.PLAIN for each in by_model.values() for n in each
        ),
    )
