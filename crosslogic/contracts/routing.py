"""How ext_authz steers a request through Envoy: request headers, and a model's clusters.

ext_authz names the cluster in ``CLUSTER_HEADER`` (the route's ``cluster_header``) and how to
read the response's token usage in ``USAGE_HEADER`` (the usage filter's matcher); the xDS
service publishes, per model, the clusters named here: ``model_cluster`` (every node),
``preferred_cluster`` (a region's nodes first, the others as failover) and
``strict_cluster`` (a region's nodes only). Envoy strips every
client-sent header starting with ``INTERNAL_HEADER_PREFIX`` before routing, so only
ext_authz can set these; the node simulator refuses requests that still carry one.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERNAL_HEADER_PREFIX = "x-crosslogic-"

CLUSTER_HEADER = "x-crosslogic-cluster"
"""The cluster of the requested model (``model_cluster``): Envoy routes by it."""

USAGE_HEADER = "x-crosslogic-usage"
"""How Envoy reads token usage from the response: one of ``USAGE_SOURCES``."""
USAGE_SCAN = "scan"  # Lua, chunk by chunk: streams and embeddings (can outgrow the buffer)
USAGE_JSON = "json"  # the C++ json_to_metadata filter, buffered: small JSON bodies
USAGE_SOURCES = (USAGE_SCAN, USAGE_JSON)

ALLOWED_MODELS_HEADER = "x-crosslogic-allowed-models"
"""On GET /v1/models: the models the key may use (``*`` for all), read by the control plane."""

TENANT_HEADER = "x-crosslogic-tenant-id"
"""On GET /v1/models and /v1/usage: the key's tenant, read by the control plane (a tenant's
own usage report)."""

ALLOWED_REGIONS_HEADER = "x-crosslogic-allowed-regions"
"""On GET /v1/models: the regions the key may be served in (``*`` for all)."""

PREFIX_HASH_HEADER = "x-crosslogic-prefix-hash"
"""A hash of the prompt's first characters, set for prefix-affinity models: the route's
``hash_policy`` hashes it (ignored by clusters that do not hash)."""

REGION_HEADER = "crosslogic-region"
"""Sent by clients (like OpenAI's ``OpenAI-Project``) to name the region they prefer; outside
the internal prefix, so Envoy passes it to ext_authz, which validates it."""

MODEL_CLUSTER_PREFIX = "model_"

LEAST_LOADED = "least_loaded"
ROUND_ROBIN = "round_robin"
HEALTH_WEIGHTED = "health_weighted"
RANDOM = "random"
PREFIX_AFFINITY = "prefix_affinity"
STRATEGIES = (LEAST_LOADED, ROUND_ROBIN, HEALTH_WEIGHTED, RANDOM, PREFIX_AFFINITY)
"""A model's scheduling strategy (``models.lb_strategy``); the first is the default."""


def model_cluster(model_id: int) -> str:
    """The Envoy cluster serving a model: named by its id, never by its (free-form) name."""
    return f"{MODEL_CLUSTER_PREFIX}{model_id}"


def preferred_cluster(model_id: int, region: str) -> str:
    """The model's nodes in ``region`` at priority 0, every other node at priority 1."""
    return f"{MODEL_CLUSTER_PREFIX}{model_id}_in_{region}"


def strict_cluster(model_id: int, region: str) -> str:
    """The model's nodes in ``region`` only: never served elsewhere."""
    return f"{MODEL_CLUSTER_PREFIX}{model_id}_only_{region}"


@dataclass(frozen=True)
class Model:
    """A model of the catalog, as ext_authz routes to it and the xDS service publishes it."""

    id: int
    name: str
    strategy: str = LEAST_LOADED

    @property
    def cluster(self) -> str:
        return model_cluster(self.id)
