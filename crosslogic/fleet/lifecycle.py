"""A node's lifecycle, pure: what a heartbeat does to a node, and the state an operator sees.

Statuses (the ``nodes.status`` column): ``active`` (routed), ``draining`` (no new requests,
in-flight ones complete: Envoy's EDS DRAINING), ``removed`` (by an operator, or at the end of
a drain: final, a heartbeat never undoes it) and ``dead`` (deregistered, replaced by a node on
the same address, or silent too long: it comes back by registering again). The state adds
``unhealthy``: active or draining but not heard from within the heartbeat timeout (xDS has
already dropped it from Envoy's endpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVE, DRAINING, REMOVED, DEAD = "active", "draining", "removed", "dead"
UNHEALTHY = "unhealthy"
ROUTED = (ACTIVE, DRAINING)  # the statuses xDS turns into endpoints, if heard from lately
# a node silent this many heartbeat timeouts is forgotten (dead): unhealthy long before
FORGET_AFTER_TIMEOUTS = 6


@dataclass(frozen=True)
class AfterHeartbeat:
    """The outcome of a heartbeat: the node's new status, or why it is refused."""

    status: str | None  # None: refused
    drained: bool = False  # a draining node reported nothing running: it is removed now
    removed: bool = False  # refused: removed, must not register again (410)
    forgotten: bool = False  # refused: dead or unknown, should register again (404)


def after_heartbeat(status: str | None, *, requests_running: int) -> AfterHeartbeat:
    """What a heartbeat reporting ``requests_running`` does to a node in ``status`` (None:
    no such node). A drain ends when its in-flight requests have."""
    if status == ACTIVE:
        return AfterHeartbeat(ACTIVE)
    if status == DRAINING:
        if requests_running == 0:
            return AfterHeartbeat(REMOVED, drained=True)
        return AfterHeartbeat(DRAINING)
    if status == REMOVED:
        return AfterHeartbeat(None, removed=True)
    return AfterHeartbeat(None, forgotten=True)


def state(status: str, *, heartbeat_age_s: float, heartbeat_timeout_s: float) -> str:
    """What ``GET /admin/nodes`` shows: the status, or ``unhealthy`` for a routed node whose
    heartbeats stopped."""
    if status in ROUTED and heartbeat_age_s > heartbeat_timeout_s:
        return UNHEALTHY
    return status


def forget_after(heartbeat_timeout_s: float) -> float:
    """Seconds of silence after which a node is marked dead (it may register again)."""
    return heartbeat_timeout_s * FORGET_AFTER_TIMEOUTS
