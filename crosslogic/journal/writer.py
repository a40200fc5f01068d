"""ext_authz's side of the admission journal: one HSET per admitted model request.

ext_authz answers once the entry is written to Redis' socket, without waiting for the
reply, and the write goes out with the rate-limit script when ext_authz also decides limits
(the pipelined client sends the commands of one event-loop turn in one write), so the
journal adds no round trip to a request. Redis down: the request is admitted anyway (the access
log still records it, unless Envoy dies too) and counted; after a failure the journal is
not tried for a second, so an outage never costs a timeout per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from crosslogic.contracts.journal import DEFAULT_GATEWAY, boots_key, journal_key
from crosslogic.errors import Unavailable
from crosslogic.redis_client import RedisClient

log = logging.getLogger(__name__)

BREAKER_OPEN_S = 1.0


class JournalMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "crosslogic_usage_journal_errors_total",
            "admitted model requests that could not be journaled",
            ["reason"],  # redis_error, redis_skipped (breaker open), no_boot
            registry=registry,
        )


class AdmissionWriter:
    """``admit`` journals one admitted request and never raises; ``withdraw`` takes an entry
    back when the request was refused after all (a rate limit decided in the same turn)."""

    def __init__(
        self,
        redis: RedisClient,
        metrics: JournalMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._clock = clock
        self._down_until = 0.0
        self._announced: set[str] = set()  # boots named in their gateway's set by this process

    async def admit(
        self,
        boot: str | None,
        request_id: str,
        record: str,
        *,
        gateway: str = DEFAULT_GATEWAY,
    ) -> bool:
        """True once the entry is on its way to Redis (in the kernel's socket buffer: it
        arrives even if this process dies now). Its reply is not waited for: the request is
        admitted either way, and a failure only shows in the metric, so Redis costs the
        request no round trip of its own."""
        if not boot or not request_id:
            self._metrics.errors.labels("no_boot").inc()
            return False
        if self._clock() < self._down_until:
            self._metrics.errors.labels("redis_skipped").inc()
            return False
        try:
            if boot not in self._announced:
                # once per boot, in the same write as the entry: billing finds the journal of
                # an Envoy that died before billing ever heard of it
                self._announced.add(boot)
                await self._redis.send_unconfirmed(
                    "SADD",
                    boots_key(gateway),
                    boot,
                    on_reply=lambda r: self._announce_replied(boot, r),
                )
            await self._redis.send_unconfirmed(
                "HSET", journal_key(boot), request_id, record, on_reply=self._replied
            )
        except Unavailable as exc:
            self._failed(exc)
            return False
        return True

    def _announce_replied(self, boot: str, reply: Any) -> None:
        if isinstance(reply, Unavailable):
            self._announced.discard(boot)  # named again with the next entry
        self._replied(reply)

    def _replied(self, reply: Any) -> None:
        if isinstance(reply, Unavailable):
            self._failed(reply)

    def _failed(self, exc: BaseException) -> None:
        self._metrics.errors.labels("redis_error").inc()
        if self._clock() >= self._down_until:
            log.warning("admission journal unavailable for %.0fs: %s", BREAKER_OPEN_S, exc)
        self._down_until = self._clock() + BREAKER_OPEN_S

    async def withdraw(self, boot: str, request_id: str) -> None:
        # Left behind, the entry would be billed at its estimate once this Envoy is gone.
        try:
            await self._redis.call("HDEL", journal_key(boot), request_id)
        except Unavailable as exc:
            self._metrics.errors.labels("withdraw_failed").inc()
            log.warning("could not withdraw refused request %s: %s", request_id, exc)
