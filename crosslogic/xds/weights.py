"""Endpoint weights from the load nodes report, pure: load -> health score -> EDS weight.

Envoy balances by ``load_balancing_weight`` (1 to ``MAX_WEIGHT`` here); what the weight is
made of depends on the model's strategy (``crosslogic.xds.clusters`` maps each onto Envoy):

* ``least_loaded``: ``MAX_WEIGHT * (1 - kv/2) / (1 + running + 2 * waiting)``. Envoy's own
  least-request sees only the requests in flight through itself, and there are several
  Envoys; the node's heartbeat counts them all, so a node busy with another Envoy's
  requests gets fewer new ones. Waiting (queued) requests count twice: a queue means the
  node is already saturated.
* ``health_weighted``: ``MAX_WEIGHT * health_score``, the score (0 to 1) falling with KV-cache
  use and with a queue: how well the node is, not how busy. (The score also falls with a
  late heartbeat; ``GET /admin/nodes`` shows that.)
* ``round_robin``, ``random``, ``prefix_affinity``: every node weighs the same.

Weights do not follow every heartbeat: each heartbeat settles the node's stored weights
(:func:`on_heartbeat`, stored in ``nodes.load_weight`` and ``nodes.health_weight``): a
stored weight changes only when the new one moved more than ``HYSTERESIS`` of it (a node
hovering around a value keeps one weight, and Envoy gets no push). So a weight changes at
most once per heartbeat of its node, a heartbeat that moved one tells xDS (which rebuilds
for weights at most every ``WEIGHT_PUSH_GAP``: a bounded push rate), and every xDS replica
reads the same weights from PostgreSQL. A new node starts at ``MAX_WEIGHT`` (idle). The health
weight is the score at the heartbeat (the heartbeat's age is 0 then); a node whose
heartbeats stop is withdrawn after ``NODE_HEARTBEAT_TIMEOUT`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from crosslogic.contracts.routing import HEALTH_WEIGHTED, LEAST_LOADED

MAX_WEIGHT = 1000
MIN_WEIGHT = 1
HYSTERESIS = 0.2  # a weight changes only when the new one differs by more than 20 %


@dataclass(frozen=True)
class Load:
    """What a node's last heartbeat said, and how long ago it came."""

    requests_running: int = 0
    requests_waiting: int = 0
    kv_cache_usage_perc: float = 0.0
    heartbeat_age: float = 0.0  # seconds


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value)) if value == value else low  # NaN: the low end


def health_score(load: Load, *, heartbeat_timeout: float) -> float:
    """From 0 (about to be dropped) to 1 (idle memory, no queue, heartbeat on time).

    KV-cache use costs up to 80 % (a full cache preempts sequences), four queued requests
    halve the score, and a heartbeat older than a third of ``heartbeat_timeout`` lowers it
    linearly down to 0.1 at the timeout (the node is then withdrawn anyway)."""
    memory = 1.0 - 0.8 * _clamp(load.kv_cache_usage_perc, 0.0, 1.0)
    queue = 1.0 / (1.0 + max(0, load.requests_waiting) / 4.0)
    fresh_for = heartbeat_timeout / 3.0
    age = _clamp(load.heartbeat_age, 0.0, heartbeat_timeout)
    late = 0.0 if age <= fresh_for else (age - fresh_for) / (heartbeat_timeout - fresh_for)
    freshness = 1.0 - 0.9 * late
    return _clamp(memory * queue * freshness, 0.0, 1.0)


def load_weight(load: Load) -> int:
    """The least-loaded weight: inversely proportional to the requests the node holds."""
    busy = 1 + max(0, load.requests_running) + 2 * max(0, load.requests_waiting)
    free_memory = 1.0 - 0.5 * _clamp(load.kv_cache_usage_perc, 0.0, 1.0)
    return _bounded(MAX_WEIGHT * free_memory / busy)


def _bounded(value: float) -> int:
    return int(_clamp(round(value), MIN_WEIGHT, MAX_WEIGHT))


def weight(strategy: str, load: Load, *, heartbeat_timeout: float) -> int:
    """The weight a node of a model with ``strategy`` should have now (before hysteresis)."""
    if strategy == LEAST_LOADED:
        return load_weight(load)
    if strategy == HEALTH_WEIGHTED:
        return _bounded(MAX_WEIGHT * health_score(load, heartbeat_timeout=heartbeat_timeout))
    return MIN_WEIGHT  # equal weights: round robin, random, prefix affinity


def settle(published: int, computed: int, *, hysteresis: float = HYSTERESIS) -> int:
    """``computed`` if it moved more than ``hysteresis`` of ``published``, else ``published``."""
    if abs(computed - published) > max(1.0, hysteresis * published):
        return computed
    return published


@dataclass(frozen=True)
class Published:
    """A node's stored weights, one per load-based strategy."""

    load_weight: int = MAX_WEIGHT
    health_weight: int = MAX_WEIGHT


def on_heartbeat(
    published: Published,
    load: Load,
    *,
    heartbeat_timeout: float,
    hysteresis: float = HYSTERESIS,
) -> Published:
    """The weights to store after a heartbeat reporting ``load``: each one moves only past
    the hysteresis band around what is stored."""
    fresh = replace(load, heartbeat_age=0.0)
    health = _bounded(MAX_WEIGHT * health_score(fresh, heartbeat_timeout=heartbeat_timeout))
    return Published(
        settle(published.load_weight, load_weight(fresh), hysteresis=hysteresis),
        settle(published.health_weight, health, hysteresis=hysteresis),
    )


def endpoint_weight(strategy: str, published: Published) -> int:
    """The EDS weight of a node of a model with ``strategy``."""
    if strategy == LEAST_LOADED:
        return published.load_weight
    if strategy == HEALTH_WEIGHTED:
        return published.health_weight
    return MIN_WEIGHT  # equal weights: round robin, random, prefix affinity
