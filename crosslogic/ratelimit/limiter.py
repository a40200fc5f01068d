"""The rate-limit decision for one request, with Redis trouble handled per layer.

Shared by both places a decision can be made (``RATELIMIT_AT``): the rate-limit service
answering Envoy's rate-limit filter, or ext_authz in the same call that authorises. The
decision, its metrics and its failure behaviour are the same either way.

The global layer is decided from this process's lease of the global budget
(crosslogic/ratelimit/global_budget.py, lease.py); the tenant, environment and key layers in
one script call on the tenant's slot. A request refused there gives its global units back.

Redis gets a short timeout; after a failure the limiter stops asking it for a second, so an
outage costs one timeout now and then, never one per request. Layers that fail open are then
decided by this process's own GCRA; a layer that fails closed refuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.errors import Unavailable
from crosslogic.metrics import Tally, Timings
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import LAYERS, Identity, LimitTable
from crosslogic.ratelimit.gcra import MAX_COST, Decision, Limit, LocalGcra, interpret, limits_for
from crosslogic.ratelimit.global_budget import GlobalBudget
from crosslogic.ratelimit.store import RedisCounters

log = logging.getLogger(__name__)

BREAKER_OPEN_S = 1.0
UNAVAILABLE = ApiError(
    429,
    "Rate limiting is temporarily unavailable and this limit fails closed; retry shortly.",
    "requests",
    "rate_limit_unavailable",
)
UNLIMITED = Decision(allowed=True, states=())
# identities whose limits are kept resolved (a few hundred bytes each); past it, all dropped
CACHED_IDENTITIES = 10_000


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # counted on every request: tallied in process (crosslogic/metrics.py)
        # name kept from the original design: operators' dashboards use it
        exceeded = Counter(
            "control_plane_rate_limit_exceeded_total",
            "requests refused by a rate limit, by layer (global, tenant, environment, key) and "
            "limit (requests, tokens)",
            ["layer", "limit"],
            registry=registry,
        )
        for layer in LAYERS:  # every series present at 0 before the first refusal
            for limit in ("requests", "tokens"):
                exceeded.labels(layer, limit)
        self.exceeded = Tally(exceeded)
        self.decisions = Tally(
            Counter(
                "crosslogic_ratelimit_decisions_total",
                "rate-limit decisions",
                ["result"],
                registry=registry,
            )
        )
        self.redis_errors = Counter(
            "crosslogic_ratelimit_redis_errors_total",
            "Redis failures seen by the rate limiter",
            registry=registry,
        )
        self.global_leases = Counter(
            "crosslogic_ratelimit_global_leases_total",
            "slices of a global limit asked of Redis (lease.lua): its load per process",
            ["result"],  # granted, refused
            registry=registry,
        )
        self.latency = Timings(
            Histogram(
                "crosslogic_ratelimit_decision_seconds",
                "rate-limit decision latency",
                registry=registry,
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
            )
        )

    def flush(self) -> None:
        for tallied in (self.exceeded, self.decisions, self.latency):
            tallied.flush()


class RateLimiter:
    """``decide`` answers a Decision, or None for "refuse: Redis is down and a layer fails
    closed". ``table`` is replaced whenever operators change the limits."""

    def __init__(
        self,
        *,
        counters: RedisCounters,
        metrics: RateLimitMetrics,
        table: LimitTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._global = GlobalBudget(
            counters,
            clock=clock,
            refilled=lambda result: metrics.global_leases.labels(result).inc(),
        )
        self._metrics = metrics
        self.table = table  # also empties the limits resolved under the previous one
        self._local = LocalGcra()
        self._clock = clock
        self._redis_down_until = 0.0

    @property
    def table(self) -> LimitTable:
        return self._table

    @table.setter
    def table(self, table: LimitTable) -> None:
        self._table = table
        self._resolved: dict[Identity, tuple[Limit, ...]] = {}

    def limits(self, who: Identity, *, tokens: int) -> list[Limit]:
        """``limits_for(table.resolve(who), tokens=tokens)``, resolved once per identity and
        table (resolving built a dozen objects per request): only the token cost varies."""
        resolved = self._resolved.get(who)
        if resolved is None:
            if len(self._resolved) >= CACHED_IDENTITIES:
                self._resolved.clear()
            resolved = tuple(limits_for(self._table.resolve(who), tokens=0))
            self._resolved[who] = resolved
        cost = min(max(tokens, 0), MAX_COST)
        return [
            limit._replace(cost=cost) if limit.kind == "tokens" else limit for limit in resolved
        ]

    async def decide(self, who: Identity, *, tokens: int) -> Decision | None:
        started = time.perf_counter()
        limits = self.limits(who, tokens=tokens)
        if not limits:
            return UNLIMITED
        decision = await self._evaluate(limits)
        if decision is None:
            self._metrics.decisions.inc("fail_closed")
            return None
        if decision.refused_by is not None:
            self._metrics.exceeded.inc(decision.refused_by.layer, decision.refused_by.kind)
        result = "ok" if decision.allowed else "over_limit"
        self._metrics.decisions.inc("fail_open" if decision.degraded else result)
        self._metrics.latency.observe(time.perf_counter() - started)
        return decision

    async def _evaluate(self, limits: list[Limit]) -> Decision | None:
        if self._clock() >= self._redis_down_until:
            try:
                return await self._in_redis(limits)
            except Unavailable as exc:
                self._metrics.redis_errors.inc()
                self._redis_down_until = self._clock() + BREAKER_OPEN_S
                log.warning(
                    "Redis unavailable, deciding locally for %.0fs: %s", BREAKER_OPEN_S, exc
                )
        if any(limit.fail_mode == "closed" for limit in limits):
            return None
        return interpret(limits, self._local.evaluate(limits), degraded=True)

    async def _in_redis(self, limits: list[Limit]) -> Decision:
        """The global layer from the lease, then the others in the tenant's slot."""
        glob = [limit for limit in limits if limit.layer == "global"]
        rest = [limit for limit in limits if limit.layer != "global"]
        refusal = await self._global.take(glob)
        if refusal is not None:
            refused_by, retry_after_us = refusal
            return Decision(
                allowed=False,
                states=tuple(self._global.states(glob)),
                refused_by=refused_by,
                retry_after_s=retry_after_us / 1e6,
            )
        try:
            decision = interpret(rest, await self._counters.evaluate(rest) if rest else [1, 0, 0])
        except BaseException:
            self._global.give_back(glob)
            raise
        if not decision.allowed:
            self._global.give_back(glob)
        return replace(decision, states=(*self._global.states(glob), *decision.states))
