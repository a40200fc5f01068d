"""Rate-limit counters in Redis, and the token reservation that names them.

A counter is one string key holding a GCRA theoretical arrival time (TAT) in microseconds
of Redis' clock, set to expire when the limit is full again. The rate limiter advances it
(crosslogic/ratelimit/gcra.lua, or ``LocalGcra`` in process); billing moves token counters
by the real usage once it is known (crosslogic/billing/settle.lua). The reservation travels
from one to the other in Envoy's dynamic metadata and the access log (``Reservation``).

Layout, for a Redis Cluster: every counter of the tenant, environment and key layers carries
its tenant's hash tag, ``crosslogic:rl:{t:<tenant_id>}:<layer>:<ident>:<kind>:<period_s>``, so
one script call covers those three layers of a request in one slot, and tenants spread over
the shards. The global layer's counters, ``crosslogic:rl:global:all:<kind>:<period_s>``, are
a slot of their own, leased to the rate-limit processes in slices
(crosslogic/ratelimit/lease.py). Billing settles whatever keys a reservation names: counters
of the older, untagged layout (``crosslogic:rl:<layer>:<ident>:...``) still in flight are
just keys.
"""

from __future__ import annotations

from typing import TypedDict

KEY_PREFIX = "crosslogic:rl:"

# No counter is set further ahead than this (400 days; both scripts hold the same constant):
# timestamps stay exact integers in Lua's doubles, and string.format("%d") can print them.
MAX_AHEAD_US = 400 * 86400 * 1_000_000


def counter_key(*, layer: str, ident: str, kind: str, period_s: int, tenant: str = "") -> str:
    """One window of one layer's limit: ``kind`` is "requests" or "tokens"; ``tenant`` is
    the tenant whose hash tag the tenant, environment and key layers carry."""
    if layer == "global":
        return f"{KEY_PREFIX}{layer}:{ident}:{kind}:{period_s}"
    return f"{KEY_PREFIX}{{t:{tenant}}}:{layer}:{ident}:{kind}:{period_s}"


class Reservation(TypedDict):
    """The tokens debited for a request, and every token counter (with its microseconds
    per token) that billing corrects by ``real - tokens`` once the usage is known."""

    tokens: int
    counters: list[list[str | float]]  # [key, microseconds per token]
