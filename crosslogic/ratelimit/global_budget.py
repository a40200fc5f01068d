"""The global layer's decisions: the local lease first, one refill per limit at a time.

Concurrent requests that find the lease short wait for the same refill (single flight)
instead of each asking Redis: the global key sees one script call per slice per process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from crosslogic.ratelimit.gcra import Limit, LimitState
from crosslogic.ratelimit.lease import LeaseBook
from crosslogic.ratelimit.store import RedisCounters


class GlobalBudget:
    """``take`` spends a request's global units from the lease (refilling it from Redis when
    it falls short) and answers None, or the refusing limit and its retry-after in
    microseconds; ``give_back`` returns them. Raises Unavailable when Redis cannot answer
    (units already taken by this request are then given back by the caller)."""

    def __init__(
        self,
        counters: RedisCounters,
        *,
        clock: Callable[[], float],
        refilled: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._counters = counters
        self._refilled = refilled  # "granted" or "refused", once per script call
        self.book = LeaseBook(clock=clock)
        self._refills: dict[str, asyncio.Future[int]] = {}

    async def take(self, limits: Sequence[Limit]) -> tuple[Limit, int] | None:
        taken: list[Limit] = []
        try:
            for limit in limits:
                retry_after_us = await self._take_one(limit)
                if retry_after_us:
                    self.give_back(taken)
                    return limit, retry_after_us
                taken.append(limit)
        except BaseException:
            self.give_back(taken)
            raise
        return None

    def give_back(self, limits: Sequence[Limit]) -> None:
        for limit in limits:
            self.book.give_back(limit)

    def states(self, limits: Sequence[Limit]) -> list[LimitState]:
        return [self.book.state(limit) for limit in limits]

    async def _take_one(self, limit: Limit) -> int:
        while not self.book.take(limit):
            refill = self._refills.get(limit.redis_key)
            if refill is None:
                refill = asyncio.ensure_future(self._refill(limit))
                self._refills[limit.redis_key] = refill
                refill.add_done_callback(self._forget)
            # shielded: one waiter timing out must not cancel the others' refill
            retry_after_us = await asyncio.shield(refill)
            if retry_after_us:
                return retry_after_us
        return 0

    def _forget(self, done: asyncio.Future[int]) -> None:
        for key, refill in list(self._refills.items()):
            if refill is done:
                del self._refills[key]

    async def _refill(self, limit: Limit) -> int:
        """Ask Redis for a slice: 0 once granted (the lease holds it), else retry-after."""
        granted, retry_after_us, remaining, reset_us = await self._counters.lease(
            limit, self.book.ask(limit)
        )
        self._refilled("granted" if granted else "refused")
        if not granted:
            return max(retry_after_us, 1)
        self.book.granted(limit, granted, remaining=remaining, reset_after_s=reset_us / 1e6)
        return 0
