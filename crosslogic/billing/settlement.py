"""Settling token reservations in Redis once billing knows the real usage.

The rate-limit service debits an estimate before a request runs; here each reservation is
corrected to the real count (refund or extra charge) with settle.lua, all of one batch
pipelined on one connection. A failure leaves the reservation as it was: conservative for a
limit, never lost usage (the usage rows are already committed).
"""

from __future__ import annotations

import asyncio
import logging
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
        results = await asyncio.gather(
            *(
                self._redis.eval_script(
                    self._script,
                    [k for k, _ in s.counters],
                    [round(s.delta_tokens * i) for _, i in s.counters],
                )
                for s in due
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        self._settled.labels("ok").inc(len(due) - len(failed))
        if failed:
            self._settled.labels("failed").inc(len(failed))
            if not all(isinstance(r, RedisUnavailable) for r in failed):
                log.error("token settlement failed: %r", failed[0])
            else:
                log.warning("could not settle %d reservation(s): %s", len(failed), failed[0])
