"""Settling token reservations in Redis once billing knows the real usage.

The rate limiter debits an estimate before a request runs; here each reservation is
corrected to the real count (refund or extra charge) with settle.lua, summed per counter so
that one script call settles a whole batch. Corrections that cannot be applied (Redis down)
are kept, still summed per counter, and retried with backoff until they land: a limit is
never left wrong after Redis returns. The usage rows are committed before, so no usage is
lost either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from crosslogic.billing.accesslog import Settlement
from crosslogic.errors import Unavailable
from crosslogic.redis_client import RedisClient
from crosslogic.redis_pipe import read_script

log = logging.getLogger(__name__)

CHUNK = 1000  # counters per script call (all of one slot in a Redis Cluster)
# Pending corrections are one float per counter (a counter is a key, tenant or environment
# window): this bounds memory through a long outage; beyond it new counters are dropped.
MAX_PENDING_COUNTERS = 100_000
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class TokenSettler:
    """``settle`` applies a batch's corrections (and any still pending); ``retry_forever``
    keeps trying what failed. Neither raises when Redis is down."""

    def __init__(
        self,
        redis: RedisClient,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = MAX_PENDING_COUNTERS,
    ) -> None:
        self._redis = redis
        self._script = read_script("crosslogic.billing", "settle.lua")
        self._clock = clock
        self._max_pending = max_pending
        self._pending: dict[str, float] = {}  # counter -> microseconds still to move it by
        self._pending_items = 0  # reservations whose correction is (partly) in _pending
        self._failures = 0
        self._retry_at = 0.0
        self._settled = Counter(
            "crosslogic_billing_token_settlements_total",
            "token reservations settled to the real usage",
            ["result"],  # ok, failed (kept and retried), dropped (over the memory bound)
            registry=registry,
        )
        self._pending_gauge = Gauge(
            "crosslogic_billing_settlements_pending",
            "token reservations whose correction failed and is waiting to be retried",
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    @property
    def pending(self) -> int:
        """Reservations whose correction has not landed yet."""
        return self._pending_items

    def pending_adjustments(self) -> dict[str, float]:
        """Counter -> microseconds still to move it by."""
        return dict(self._pending)

    async def settle(self, items: Sequence[Settlement]) -> None:
        due = [s for s in items if s.delta_tokens != 0]
        if due:
            self._merge(per_counter(due), len(due))
        await self.flush()

    def _merge(self, adjustments: dict[str, float], items: int) -> None:
        dropped = 0
        for key, delta in adjustments.items():
            if key in self._pending or len(self._pending) < self._max_pending:
                self._pending[key] = self._pending.get(key, 0.0) + delta
            else:
                dropped += 1
        if dropped:
            self._settled.labels("dropped").inc(dropped)
            log.error("settlement backlog full: dropped corrections of %d counter(s)", dropped)
        self._pending_items += items
        self._pending_gauge.set(self._pending_items)

    async def flush(self) -> None:
        """Apply everything pending, unless a recent failure asks to wait (backoff)."""
        if not self._pending or self._clock() < self._retry_at:
            return
        todo, items = self._pending, self._pending_items
        self._pending, self._pending_items = {}, 0
        # one script call per slot of a Redis Cluster (one group for a single Redis), the
        # calls of one flush pipelined together
        chunks = [
            group[start : start + CHUNK]
            for group in self._redis.slot_groups(list(todo))
            for start in range(0, len(group), CHUNK)
        ]
        results = await asyncio.gather(
            *(
                self._redis.eval_script(self._script, c, [round(todo[k]) for k in c])
                for c in chunks
            ),
            return_exceptions=True,
        )
        errors = [result for result in results if isinstance(result, BaseException)]
        failed = [c for c, r in zip(chunks, results, strict=True) if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, Unavailable):
                raise error  # a bug: seen at once, like any other
        if errors:
            exc = errors[0]
            # What was applied stays applied; the rest is kept, summed with later corrections.
            # (A chunk whose reply was lost after Redis ran it is applied twice: it takes a
            # reply slower than the 1 s timeout, and costs a limit accuracy, never usage.)
            self._merge({k: todo[k] for chunk in failed for k in chunk}, items)
            self._failures += 1
            wait = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures - 1))
            self._retry_at = self._clock() + wait
            self._settled.labels("failed").inc(items)
            log.warning(
                "could not settle %d reservation(s), retrying in %.1fs: %s", items, wait, exc
            )
            return
        self._failures = 0
        self._settled.labels("ok").inc(items)
        self._pending_gauge.set(self._pending_items)

    async def retry_forever(self, *, every: float = 0.25) -> None:
        while True:
            await asyncio.sleep(every)
            await self.flush()
            self._pending_gauge.set(self._pending_items)  # current, also after a restart


def per_counter(items: Sequence[Settlement]) -> dict[str, float]:
    """Microseconds to move each counter by: the batch's corrections, summed per counter."""
    total: dict[str, float] = defaultdict(float)
    for item in items:
        for key, interval_us in item.counters:
            total[key] += item.delta_tokens * interval_us
    return dict(total)
