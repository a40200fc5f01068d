"""The global layer's budget, leased to this process in slices, pure (clock injected).

Every request of the cloud passes the global layer: one Redis key for it would put all traffic
on one shard. Instead each rate-limit process takes the global budget from Redis in slices
(lease.lua, the same GCRA rule on the global key alone: strict for requests, debit for
tokens) and spends them locally; only a lease that cannot cover a request asks Redis again.

A lease is ``units`` of one global limit (negative: a debt, for debit limits only: a request
admitted while one unit was left may overdraw, and the next refill repays it) that expire
``LEASE_S`` after the refill that granted them (units taken long ago must not be spent in a
later window). A slice is ``max(1, limit per second x SLICE_S)``: a small limit refills per
request, and stays exact.

Exactness bound: the global layer never admits more than Redis granted, and Redis grants by
the one key's GCRA, so never more than its limit (a debit limit may overshoot by one
reservation plus one slice per process, as gcra.lua's debit rule overshoots by one
reservation). It may admit less: units leased and left unused expire, at most processes x
slice per lease lifetime. A request refused by a later layer gives its units back to the
lease, never lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from crosslogic.ratelimit.gcra import Limit, LimitState

LEASE_S = 1.0
SLICE_S = 0.1


def slice_for(limit: Limit) -> int:
    """Units leased beyond a request's own need: a tenth of a second of the limit's rate."""
    return max(1, math.floor(limit.limit / limit.period_s * SLICE_S))


@dataclass
class Lease:
    units: int = 0  # negative: a debt to repay with the next refill
    expires: float = 0.0
    remaining: int = 0  # Redis' remaining after the last refill (headers)
    reset_at: float = 0.0  # when, by this clock, the global key is full again


@dataclass(frozen=True)
class Ask:
    """A refill: ``units`` wanted, at least ``least`` (strict limits: the request's
    shortfall, granted when the whole ask no longer fits); debit limits take all or none."""

    units: int
    least: int


class LeaseBook:
    """The leases of this process, one per global limit (its Redis key)."""

    def __init__(self, *, clock: Callable[[], float], lease_s: float = LEASE_S) -> None:
        self._clock = clock
        self._lease_s = lease_s
        self._leases: dict[str, Lease] = {}

    def _lease(self, limit: Limit) -> Lease:
        lease = self._leases.setdefault(limit.redis_key, Lease())
        if self._clock() >= lease.expires and lease.units > 0:
            lease.units = 0  # expired units are not spent; a debt stays owed
        return lease

    def take(self, limit: Limit) -> bool:
        """Spend the request's cost from the lease, if it covers it (a debit limit: while at
        least one unit is left)."""
        if limit.cost == 0:
            return True
        lease = self._lease(limit)
        needed = 1 if limit.kind == "tokens" else limit.cost
        if lease.units < needed:
            return False
        lease.units -= limit.cost
        return True

    def give_back(self, limit: Limit) -> None:
        """A request that took its units was refused by another layer: they are the lease's
        again (until it expires)."""
        self._leases.setdefault(limit.redis_key, Lease()).units += limit.cost

    def ask(self, limit: Limit) -> Ask:
        """What to ask Redis for when ``take`` failed: the debt plus a slice (debit), or the
        request's shortfall rounded up to a slice (strict)."""
        lease = self._lease(limit)
        if limit.kind == "tokens":
            return Ask(units=max(0, -lease.units) + slice_for(limit), least=0)
        shortfall = limit.cost - max(lease.units, 0)
        return Ask(units=max(slice_for(limit), shortfall), least=shortfall)

    def granted(self, limit: Limit, units: int, *, remaining: int, reset_after_s: float) -> None:
        lease = self._lease(limit)
        now = self._clock()
        lease.units += units
        lease.expires = now + self._lease_s
        lease.remaining, lease.reset_at = remaining, now + reset_after_s

    def units(self, limit: Limit) -> int:
        """What this process holds of the limit (negative: owes)."""
        return self._lease(limit).units

    def state(self, limit: Limit) -> LimitState:
        """The limit as this process sees it: Redis' remaining plus its own unused units."""
        lease = self._lease(limit)
        return LimitState(
            limit=limit,
            remaining=max(lease.remaining + lease.units, 0),
            reset_after_s=max(lease.reset_at - self._clock(), 0.0),
        )
