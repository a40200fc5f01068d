"""How ext_authz steers a request through Envoy: request headers, and a model's cluster.

ext_authz names the model's cluster in ``CLUSTER_HEADER`` (the route's ``cluster_header``)
and how to read the response's token usage in ``USAGE_HEADER`` (the usage filter's matcher);
the xDS service publishes one cluster per model under the same name. Envoy strips every
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

MODEL_CLUSTER_PREFIX = "model_"


def model_cluster(model_id: int) -> str:
    """The Envoy cluster serving a model: named by its id, never by its (free-form) name."""
    return f"{MODEL_CLUSTER_PREFIX}{model_id}"


@dataclass(frozen=True)
class Model:
    """A model of the catalog, as ext_authz routes to it and the xDS service publishes it."""

    id: int
    name: str

    @property
    def cluster(self) -> str:
        return model_cluster(self.id)
