"""How many replicas a pool should run, pure (the clock is an argument).

Load: each of the pool's nodes reports vLLM's running and waiting requests, its capacity
(max concurrent sequences) and its KV-cache use. A node's utilisation is the larger of its
KV-cache use and (running + waiting) / capacity, so a queue (waiting > 0 at full capacity)
reads as more than 1. The replicas wanted are ceil(sum of utilisations / target), like
Kubernetes' HPA: at a target of 0.7, four nodes at 0.9 want six replicas.

Bounds: never below the floor, the larger of ``min_replicas`` and the reserved floor;
never above ``max_replicas``, except that the reserved floor wins over it (capacity sold
is a commitment: :func:`desired` then returns the floor, and the pool's state says so).

Reserved floor: reserved capacity is sold in tokens per minute (``reservations``); the
pool declares ``replica_tokens_per_minute``, what one replica serves, so the floor is
ceil(reserved tokens per minute / replica_tokens_per_minute).

Cooldowns: no scale-up within ``up_cooldown`` of the last change, no scale-down within
``down_cooldown``; within a cooldown the only change is into the bounds. Down goes one
replica at a time (a drained replica's load moves to the others before the next).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

TARGET_UTILISATION = 0.7


@dataclass(frozen=True)
class NodeLoad:
    """A node's last heartbeat, in vLLM's terms."""

    requests_running: int
    requests_waiting: int
    kv_cache_usage_perc: float
    capacity: int

    @property
    def utilisation(self) -> float:
        queued = (self.requests_running + self.requests_waiting) / max(self.capacity, 1)
        return max(self.kv_cache_usage_perc, queued)


@dataclass(frozen=True)
class Bounds:
    min_replicas: int
    max_replicas: int
    reserved_floor: int = 0

    @property
    def floor(self) -> int:
        return max(self.min_replicas, self.reserved_floor)

    @property
    def ceiling(self) -> int:
        return max(self.max_replicas, self.floor)  # the reserved floor wins over max

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.floor), self.ceiling)


@dataclass(frozen=True)
class Cooldowns:
    up: timedelta
    down: timedelta


def reserved_floor(reserved_tokens_per_minute: int, replica_tokens_per_minute: int) -> int:
    """Replicas needed to serve the reserved capacity sold, rounded up."""
    if reserved_tokens_per_minute <= 0:
        return 0
    return math.ceil(reserved_tokens_per_minute / replica_tokens_per_minute)


def wanted(loads: Sequence[NodeLoad], *, target: float = TARGET_UTILISATION) -> int | None:
    """Replicas the load asks for; None without a node reporting (no signal: hold)."""
    if not loads:
        return None
    return math.ceil(round(sum(load.utilisation for load in loads) / target, 9))


def desired(
    *,
    current: int,
    bounds: Bounds,
    loads: Sequence[NodeLoad],
    last_scaled_at: datetime | None,
    now: datetime,
    cooldowns: Cooldowns,
    target: float = TARGET_UTILISATION,
) -> int:
    """The replicas to aim at now, given the ``current`` aim."""
    held = bounds.clamp(current)
    want = wanted(loads, target=target)
    if want is None:
        return held
    since = None if last_scaled_at is None else now - last_scaled_at
    if want > held:
        if since is not None and since < cooldowns.up:
            return held
        return bounds.clamp(want)
    if want < held:
        if since is not None and since < cooldowns.down:
            return held
        return bounds.clamp(held - 1)
    return held
