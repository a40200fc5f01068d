"""The seed's request metrics, counted from the access log (no cost on the request path):
``control_plane_requests_total`` and ``control_plane_request_duration_seconds`` by model,
endpoint and status, for every request Envoy answered; tokens and cost of billed rows by
model and tenant.

Every label is bounded: models by the catalog (a request ext_authz did not attribute is
``none``), endpoints by the API's paths (anything else is ``other``), statuses by HTTP, and
tenants by ``METRICS_TENANTS``: the first that many tenants this process bills are labelled
by id, every later one is ``other`` (0: all ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.billing.accesslog import Outcome, UsageRecord
from crosslogic.billing.pricing import Priced

ENDPOINTS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
    "/v1/usage": "usage",
}
OTHER = "other"
NO_MODEL = "none"
# from a refusal in a millisecond to a long stream
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def costs(records: Sequence[UsageRecord], prices: Sequence[Priced]) -> dict[str, Decimal]:
    """Each request's cost, by request id, from its first line (``prices``: the records')."""
    found: dict[str, Decimal] = {}
    for record, price in zip(records, prices, strict=True):
        found.setdefault(record.request_id, price.cost)
    return found


def endpoint(path: str) -> str:
    return ENDPOINTS.get(path, OTHER)


class TenantLabels:
    """A tenant's label: its id for the first ``limit`` tenants seen, ``other`` after."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._named: set[str] = set()

    def __call__(self, tenant_id: str) -> str:
        if tenant_id in self._named:
            return tenant_id
        if len(self._named) < self._limit:
            self._named.add(tenant_id)
            return tenant_id
        return OTHER


class RequestMetrics:
    """Created against ``registry``; ``tenants``: METRICS_TENANTS."""

    def __init__(self, registry: CollectorRegistry, *, tenants: int) -> None:
        labels = ["model", "endpoint", "status"]
        self.requests = Counter(
            "control_plane_requests_total",
            "requests answered by the gateway (Envoy's access log), by model, endpoint and "
            "status (0: the client left before the answer)",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "control_plane_request_duration_seconds",
            "time from the request's first byte to the response's last, as Envoy logged it",
            labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "crosslogic_billing_tokens_total",
            "tokens of the usage rows written from the access log, by model, tenant and kind",
            ["model", "tenant", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "crosslogic_billing_cost_usd_total",
            "cost in USD of the usage rows written from the access log, by model and tenant",
            ["model", "tenant"],
            registry=registry,
        )
        self._tenant = TenantLabels(tenants)

    def answered(self, outcomes: Iterable[Outcome]) -> None:
        # grouped by labels first: a batch holds thousands of lines and few label sets, and
        # each metric write (a labels() lookup, an mmap write) costs microseconds
        groups: dict[tuple[str, str, str], list[int]] = {}
        for seen in outcomes:
            labels = (seen.model or NO_MODEL, endpoint(seen.path), str(seen.status))
            groups.setdefault(labels, []).append(seen.duration_ms)
        for labels, durations in groups.items():
            self.requests.labels(*labels).inc(len(durations))
            child = self.duration.labels(*labels)
            for ms in durations:
                child.observe(ms / 1000)

    def billed(self, records: Sequence[UsageRecord], costs: dict[str, Decimal]) -> None:
        """``records``: the rows just written; ``costs``: their cost by request id."""
        sums: dict[tuple[str, str], list[float]] = {}  # prompt, completion, cost
        for record in records:
            key = (record.model or NO_MODEL, self._tenant(record.tenant_id))
            row = sums.setdefault(key, [0, 0, 0.0])
            row[0] += record.prompt_tokens
            row[1] += record.completion_tokens
            row[2] += float(costs.get(record.request_id, 0))
        for (model, tenant), (prompt, completion, cost) in sums.items():
            self.tokens.labels(model, tenant, "prompt").inc(prompt)
            self.tokens.labels(model, tenant, "completion").inc(completion)
            # a free model's requests too: the series exists once the model is used
            self.cost.labels(model, tenant).inc(cost)
