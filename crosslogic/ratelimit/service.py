"""The gRPC edge of the rate-limit service: ShouldRateLimit -> limiter -> Redis -> answer.

The one place where Redis trouble becomes a decision, per layer: fail open (the default)
through this replica's in-process limiter, or fail closed with a fast 429. After a Redis
failure the service stops asking Redis for a second, so an outage costs at most one timeout
now and then, never a timeout per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import Identity, LimitTable
from crosslogic.ratelimit.limiter import Decision, Limit, LocalGcra, interpret, limits_for
from crosslogic.ratelimit.store import CounterStoreUnavailable, RedisCounters

log = logging.getLogger(__name__)

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
BREAKER_OPEN_S = 1.0
UNAVAILABLE = ApiError(
    429,
    "Rate limiting is temporarily unavailable and this limit fails closed; retry shortly.",
    "requests",
    "rate_limit_unavailable",
)


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # name kept from the original design: operators' dashboards use it
        self.exceeded = Counter(
            "control_plane_rate_limit_exceeded_total",
            "requests refused by a rate limit",
            ["layer"],
            registry=registry,
        )
        self.decisions = Counter(
            "crosslogic_ratelimit_decisions_total",
            "rate-limit decisions",
            ["result"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "crosslogic_ratelimit_redis_errors_total",
            "Redis failures seen by the rate-limit service",
            registry=registry,
        )
        self.latency = Histogram(
            "crosslogic_ratelimit_decision_seconds",
            "rate-limit decision latency",
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
        )


def request_facts(request: rls_pb2.RateLimitRequest) -> tuple[Identity, int] | None:
    """Who asks and the token estimate, from the descriptor ext_authz's metadata filled."""
    for descriptor in request.descriptors:
        entries = {e.key: e.value for e in descriptor.entries}
        if "api_key_id" not in entries:
            continue
        try:
            tokens = int(float(entries.get("tokens", "0")))
            key_rpm = int(entries["key_rpm"]) if entries.get("key_rpm") else None
        except ValueError:
            tokens, key_rpm = 0, None
        return Identity(
            tenant_id=entries.get("tenant_id", ""),
            environment_id=entries.get("environment_id", ""),
            api_key_id=entries["api_key_id"],
            plan=entries.get("plan", "default"),
            key_rpm=key_rpm,
        ), max(tokens, 0)
    return None


def _headers(pairs: list[tuple[str, str]]) -> list[base_pb2.HeaderValue]:
    return [base_pb2.HeaderValue(key=k, value=v) for k, v in pairs]


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OK if decision.allowed else OVER_LIMIT,
        response_headers_to_add=_headers(decision.headers()),
    )
    if not decision.allowed:
        response.raw_body = decision.error().body()
        response.response_headers_to_add.add(key="content-type", value="application/json")
    reservation = decision.reservation()
    if reservation is not None:
        metadata = struct_pb2.Struct()
        metadata.update({"token_reservation": reservation})
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def refused_unavailable() -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OVER_LIMIT,
        response_headers_to_add=_headers(
            [("retry-after", "1"), ("content-type", "application/json")]
        ),
    )
    response.raw_body = UNAVAILABLE.body()
    return response


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Envoy's ShouldRateLimit: every layer of a request decided in one Redis round trip."""

    def __init__(
        self,
        *,
        counters: RedisCounters,
        metrics: RateLimitMetrics,
        table: LimitTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._metrics = metrics
        self.table = table
        self._local = LocalGcra()
        self._clock = clock
        self._redis_down_until = 0.0

    async def ShouldRateLimit(  # noqa: N802 (gRPC method name)
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        facts = request_facts(request)
        if facts is None:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        identity, tokens = facts
        limits = limits_for(self.table.resolve(identity), tokens=tokens)
        if not limits:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        decision = await self._decide(limits)
        if decision is None:
            self._metrics.decisions.labels("fail_closed").inc()
            return refused_unavailable()
        if decision.refused_by is not None:
            self._metrics.exceeded.labels(decision.refused_by.layer).inc()
        result = "ok" if decision.allowed else "over_limit"
        self._metrics.decisions.labels("fail_open" if decision.degraded else result).inc()
        self._metrics.latency.observe(time.perf_counter() - started)
        return to_response(decision)

    async def _decide(self, limits: list[Limit]) -> Decision | None:
        """The decision, from Redis if it answers; None means "refuse: fails closed"."""
        if self._clock() >= self._redis_down_until:
            try:
                return interpret(limits, await self._counters.evaluate(limits))
            except CounterStoreUnavailable as exc:
                self._metrics.redis_errors.inc()
                self._redis_down_until = self._clock() + BREAKER_OPEN_S
                log.warning(
                    "Redis unavailable, deciding locally for %.0fs: %s", BREAKER_OPEN_S, exc
                )
        if any(limit.fail_mode == "closed" for limit in limits):
            return None
        return interpret(limits, self._local.evaluate(limits), degraded=True)
