"""Rate-limit decisions, pure: a request's layers -> the limits to evaluate -> an answer.

gcra.lua evaluates every limit of a request in one round trip; this module decides which
limits apply and at what cost, and turns the script's reply into a decision with the headers
OpenAI clients understand. ``LocalGcra`` is the same algorithm in process, for when Redis
cannot answer and a layer fails open: one replica alone still bounds abuse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from crosslogic.contracts.counters import MAX_AHEAD_US, Reservation, counter_key
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import WINDOWS, LayerLimits

# The largest cost one request can carry against a limit. gcra.lua computes in doubles: with
# costs bounded here and counters never set further ahead than MAX_AHEAD_US (the counters'
# contract), every timestamp stays an exact integer far below 2**53.
MAX_COST = 2**28


class Limit(NamedTuple):
    """One counter: ``limit`` units per ``period_s``; this request costs ``cost`` of them.
    (Tuples, as LimitState: several are built per request, a frozen dataclass costs more.)"""

    layer: str
    kind: str  # "requests" or "tokens" (tokens are debited: see gcra.lua)
    redis_key: str
    limit: int
    period_s: int
    cost: int
    fail_mode: str = "open"

    @property
    def interval_us(self) -> float:
        return self.period_s * 1e6 / self.limit


class LimitState(NamedTuple):
    limit: Limit
    remaining: int
    reset_after_s: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    states: tuple[LimitState, ...]
    refused_by: Limit | None = None
    retry_after_s: float = 0.0
    degraded: bool = field(default=False, compare=False)  # decided without Redis

    def headers(self) -> list[tuple[str, str]]:
        """OpenAI's x-ratelimit-* headers for the tightest requests and tokens limits."""
        out: list[tuple[str, str]] = []
        for kind in ("requests", "tokens"):
            states = [s for s in self.states if s.limit.kind == kind]
            if not states:
                continue
            tightest = min(states, key=lambda s: (s.remaining, s.limit.limit))
            out += [
                (f"x-ratelimit-limit-{kind}", str(tightest.limit.limit)),
                (f"x-ratelimit-remaining-{kind}", str(tightest.remaining)),
                (f"x-ratelimit-reset-{kind}", format_reset(tightest.reset_after_s)),
            ]
        if not self.allowed:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return out

    def error(self) -> ApiError:
        assert self.refused_by is not None
        limit = self.refused_by
        wait = max(1, math.ceil(self.retry_after_s))
        return ApiError(
            429,
            f"Rate limit reached for the {limit.layer} layer: {limit.limit} {limit.kind} per "
            f"{describe_period(limit.period_s)}. Retry after {wait}s.",
            limit.kind,
            "rate_limit_exceeded",
            limit.layer,
        )

    def reservation(self) -> Reservation | None:
        """What was debited for tokens, so that the real usage can settle it later."""
        counters: list[list[str | float]] = [
            [s.limit.redis_key, s.limit.interval_us]
            for s in self.states
            if s.limit.kind == "tokens" and s.limit.cost > 0
        ]
        if not self.allowed or not counters or self.degraded:
            return None
        tokens = next(s.limit.cost for s in self.states if s.limit.kind == "tokens")
        return {"tokens": tokens, "counters": counters}


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: '20ms', '2s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def describe_period(seconds: int) -> str:
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(seconds, f"{seconds}s")


def limits_for(layers: Sequence[LayerLimits], *, tokens: int) -> list[Limit]:
    """Every configured window of every layer; requests cost 1, tokens the estimate."""
    limits = []
    for layer in layers:
        for name, (kind, period) in WINDOWS.items():
            value = getattr(layer.row, name)
            if value is None:
                continue
            limits.append(
                Limit(
                    layer=layer.layer,
                    kind=kind,
                    redis_key=counter_key(
                        layer=layer.layer,
                        ident=layer.ident,
                        kind=kind,
                        period_s=period,
                        tenant=layer.tenant,
                    ),
                    limit=value,
                    period_s=period,
                    cost=1 if kind == "requests" else min(max(tokens, 0), MAX_COST),
                    fail_mode=layer.row.fail_mode,
                )
            )
    return limits


def script_args(limits: Sequence[Limit]) -> tuple[list[str], list[int]]:
    keys = [limit.redis_key for limit in limits]
    argv: list[int] = []
    for limit in limits:
        argv += [
            limit.period_s * 1_000_000,
            limit.limit,
            limit.cost,
            1 if limit.kind == "tokens" else 0,
        ]
    return keys, argv


def interpret(limits: Sequence[Limit], reply: Sequence[int], *, degraded: bool = False) -> Decision:
    allowed, refused_index, retry_after_us = (int(x) for x in reply[:3])
    states = tuple(
        LimitState(
            limit=limit, remaining=int(reply[3 + 2 * i]), reset_after_s=int(reply[4 + 2 * i]) / 1e6
        )
        for i, limit in enumerate(limits)
    )
    if allowed:
        return Decision(allowed=True, states=states, degraded=degraded)
    return Decision(
        allowed=False,
        states=states,
        refused_by=limits[refused_index - 1],
        retry_after_s=retry_after_us / 1e6,
        degraded=degraded,
    )


class LocalGcra:
    """gcra.lua's algorithm over an in-process dict: this replica's fallback when Redis is
    unreachable. Same reply shape, so ``interpret`` reads both."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    def evaluate(self, limits: Sequence[Limit]) -> list[int]:
        now = self._clock() * 1e6
        if len(self._tats) > self._max_keys:  # bounded memory: drop what is already full
            self._tats = {k: v for k, v in self._tats.items() if v > now}
        tats, refused, retry_after = [], 0, 0
        for i, limit in enumerate(limits, start=1):
            tat = max(self._tats.get(limit.redis_key, now), now)
            needed = min(limit.cost, 1) if limit.kind == "tokens" else limit.cost
            allow_at = tat + needed * limit.interval_us - limit.period_s * 1e6
            tats.append(tat)
            if refused == 0 and allow_at > now:
                refused, retry_after = i, math.ceil(allow_at - now)
        reply = [1 if refused == 0 else 0, refused, retry_after]
        for limit, tat in zip(limits, tats, strict=True):
            state = tat
            if refused == 0:
                state = min(tat + limit.cost * limit.interval_us, now + MAX_AHEAD_US)
                self._tats[limit.redis_key] = state
            remaining = math.floor((limit.period_s * 1e6 - (state - now)) / limit.interval_us)
            reply += [max(remaining, 0), math.ceil(state - now)]
        return reply
