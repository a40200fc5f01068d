"""Rate-limit decisions, pure: descriptors -> the limits to evaluate -> an answer.

The Redis script (gcra.lua) evaluates every limit of a request in one round trip; this module
decides which limits apply, with what cost, and turns the script's reply into a decision with
the headers OpenAI clients understand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from crosslogic.openai_errors import ApiError

# RateLimitUnit enum values of envoy.service.ratelimit.v3 -> seconds
UNIT_SECONDS = {1: 1, 2: 60, 3: 3600, 4: 86400, 7: 7 * 86400, 5: 30 * 86400, 6: 365 * 86400}
LAYERS = ("global", "tenant", "environment", "key")


@dataclass(frozen=True)
class Limit:
    """One counter to check: ``limit`` per ``period_s`` seconds, charged ``cost`` now."""

    layer: str
    redis_key: str
    limit: int
    period_s: int
    cost: int


@dataclass(frozen=True)
class Descriptor:
    entries: tuple[tuple[str, str], ...]
    requests_per_unit: int | None  # Envoy's per-descriptor limit override, if any
    unit: int | None
    hits_addend: int | None


@dataclass(frozen=True)
class LimitState:
    limit: Limit
    remaining: int
    reset_after_s: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    states: tuple[LimitState, ...]
    refused_by: Limit | None = None
    retry_after_s: float = 0.0

    def headers(self) -> list[tuple[str, str]]:
        """OpenAI's rate-limit headers for the tightest request limit (and Retry-After)."""
        out: list[tuple[str, str]] = []
        if self.states:
            tightest = min(self.states, key=lambda s: (s.remaining, s.limit.limit))
            out += [
                ("x-ratelimit-limit-requests", str(tightest.limit.limit)),
                ("x-ratelimit-remaining-requests", str(tightest.remaining)),
                ("x-ratelimit-reset-requests", format_reset(tightest.reset_after_s)),
            ]
        if not self.allowed:
            out.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return out

    def error(self) -> ApiError:
        assert self.refused_by is not None
        layer = self.refused_by.layer
        return ApiError(
            429,
            f"Rate limit reached for {layer} ({self.refused_by.limit} requests per "
            f"{describe_period(self.refused_by.period_s)}). Retry after "
            f"{max(1, math.ceil(self.retry_after_s))}s.",
            "requests",
            "rate_limit_exceeded",
            layer,
        )


def format_reset(seconds: float) -> str:
    """OpenAI's duration style: '1s', '6m0s', '20ms'."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def describe_period(seconds: int) -> str:
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    return names.get(seconds, f"{seconds}s")


def limits_for(
    descriptors: Sequence[Descriptor], *, default_rpm: int, request_hits: int
) -> list[Limit]:
    """One Limit per descriptor whose first entry names a layer; others are ignored."""
    limits = []
    for d in descriptors:
        if not d.entries or d.entries[0][0] not in LAYERS:
            continue
        layer, ident = d.entries[0]
        if d.requests_per_unit and d.unit in UNIT_SECONDS:
            limit, period = d.requests_per_unit, UNIT_SECONDS[d.unit]
        else:
            limit, period = default_rpm, 60
        cost = d.hits_addend if d.hits_addend is not None else max(request_hits, 1)
        limits.append(
            Limit(
                layer=layer,
                redis_key=f"crosslogic:rl:{layer}:{ident}:req:{period}",
                limit=limit,
                period_s=period,
                cost=cost,
            )
        )
    return limits


def script_args(limits: Sequence[Limit]) -> tuple[list[str], list[int]]:
    keys = [limit.redis_key for limit in limits]
    argv: list[int] = []
    for limit in limits:
        argv += [limit.period_s * 1_000_000, limit.limit, limit.cost]
    return keys, argv


def interpret(limits: Sequence[Limit], reply: Sequence[int]) -> Decision:
    allowed, refused_index, retry_after_us = (int(x) for x in reply[:3])
    states = tuple(
        LimitState(
            limit=limit, remaining=int(reply[3 + 2 * i]), reset_after_s=int(reply[4 + 2 * i]) / 1e6
        )
        for i, limit in enumerate(limits)
    )
    if allowed:
        return Decision(allowed=True, states=states)
    return Decision(
        allowed=False,
        states=states,
        refused_by=limits[refused_index - 1],
        retry_after_s=retry_after_us / 1e6,
    )
