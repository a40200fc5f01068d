"""Settling token reservations in Redis once billing knows the real usage.

The rate-limit service debits an estimate before a request runs; here each reservation is
corrected to the real count (refund or extra charge) with settle.lua, all of one batch
summed per counter so that one script call settles a whole batch. A failure leaves the
reservations as they were: conservative for a limit, never lost usage (the usage rows are
already committed).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from crosslogic.billing.accesslog import Settlement
from crosslogic.ratelimit.resp import PipelinedRedis, RedisUnavailable
from crosslogic.ratelimit.store import load_script

log = logging.getLogger(__name__)


class TokenSettler:
    def __init__(self, redis: PipelinedRedis, registry: CollectorRegistry) -> None:
        self._redis = redis
        self._script = load_script("settle.lua")
        self._settled = Counter(
            "crosslogic_billing_token_settlements_total",
            "token reservations settled to the real usage",
            ["result"],
            registry=registry,
        )

    async def settle(self, items: Sequence[Settlement]) -> None:
        due = [s for s in items if s.delta_tokens != 0]
        if not due:
            return
        adjustments = per_counter(due)
        keys = list(adjustments)
        try:
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                await self._redis.eval_script(
                    self._script, chunk, [round(adjustments[k]) for k in chunk]
                )
        except RedisUnavailable as exc:
            self._settled.labels("failed").inc(len(due))
            log.warning("could not settle %d reservation(s): %s", len(due), exc)
            return
        self._settled.labels("ok").inc(len(due))


CHUNK = 1000  # counters per script call


def per_counter(items: Sequence[Settlement]) -> dict[str, float]:
    """Microseconds to move each counter by: the batch's corrections, summed per counter."""
    total: dict[str, float] = defaultdict(float)
    for item in items:
        for key, interval_us in item.counters:
            total[key] += item.delta_tokens * interval_us
    return dict(total)
