"""The gRPC edge of the rate-limit service: ShouldRateLimit -> limiter -> Redis -> answer.

The one place where Redis failures become decisions: fail open (the default) so a Redis
outage never stops inference, counted in a metric.
"""

from __future__ import annotations

import logging
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.ratelimit.limiter import Decision, Descriptor, interpret, limits_for
from crosslogic.ratelimit.store import CounterStoreUnavailable, RedisCounters

log = logging.getLogger(__name__)

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


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


def to_descriptors(request: rls_pb2.RateLimitRequest) -> list[Descriptor]:
    out = []
    for d in request.descriptors:
        has_limit = d.HasField("limit")
        out.append(
            Descriptor(
                entries=tuple((e.key, e.value) for e in d.entries),
                requests_per_unit=d.limit.requests_per_unit if has_limit else None,
                unit=d.limit.unit if has_limit else None,
                hits_addend=d.hits_addend.value if d.HasField("hits_addend") else None,
            )
        )
    return out


def _headers(pairs: list[tuple[str, str]]) -> list[base_pb2.HeaderValue]:
    return [base_pb2.HeaderValue(key=k, value=v) for k, v in pairs]


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OK if decision.allowed else OVER_LIMIT,
        response_headers_to_add=_headers(decision.headers()),
    )
    for state in decision.states:
        refused = decision.refused_by is state.limit
        response.statuses.add(
            code=OVER_LIMIT if refused else OK,
            limit_remaining=state.remaining,
        )
    if not decision.allowed:
        response.raw_body = decision.error().body()
        response.response_headers_to_add.add(key="content-type", value="application/json")
    return response


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    def __init__(
        self, *, counters: RedisCounters, metrics: RateLimitMetrics, default_rpm: int
    ) -> None:
        self._counters = counters
        self._metrics = metrics
        self._default_rpm = default_rpm

    async def ShouldRateLimit(  # noqa: N802 (gRPC method name)
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        limits = limits_for(
            to_descriptors(request), default_rpm=self._default_rpm, request_hits=request.hits_addend
        )
        if not limits:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        try:
            decision = interpret(limits, await self._counters.evaluate(limits))
        except CounterStoreUnavailable as exc:
            self._metrics.redis_errors.inc()
            self._metrics.decisions.labels("fail_open").inc()
            log.warning("Redis unavailable, failing open: %s", exc)
            return rls_pb2.RateLimitResponse(overall_code=OK)
        if decision.refused_by is not None:
            self._metrics.exceeded.labels(decision.refused_by.layer).inc()
        self._metrics.decisions.labels("ok" if decision.allowed else "over_limit").inc()
        self._metrics.latency.observe(time.perf_counter() - started)
        return to_response(decision)
