"""The fleet by model, region and state: ``control_plane_active_nodes``.

Counted from the registry table beside the snapshot (which holds only the nodes that get
traffic): a node whose heartbeats stopped is counted as ``unhealthy`` until it is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg
from prometheus_client import Gauge

from crosslogic.db.errors import postgres_errors

Key = tuple[str, str, str]  # model, region, state

_CENSUS = """
SELECT m.name AS model, n.region_code AS region,
       CASE WHEN n.last_heartbeat_at > now() - make_interval(secs => $1) THEN n.status
            ELSE 'unhealthy' END AS state,
       count(*) AS nodes
FROM nodes n JOIN models m ON m.id = n.model_id
WHERE n.status IN ('active', 'draining')
GROUP BY 1, 2, 3
"""


class FleetCensus:
    """Counts the registry's nodes by (model, region, state)."""

    def __init__(self, pool: asyncpg.Pool, *, heartbeat_timeout: float) -> None:
        self._pool = pool
        self._timeout = heartbeat_timeout

    async def count(self) -> dict[Key, int]:
        with postgres_errors():
            rows = await self._pool.fetch(_CENSUS, self._timeout)
        return tally((r["model"], r["region"], r["state"], r["nodes"]) for r in rows)


def tally(rows: Iterable[tuple[str, str, str, int]]) -> dict[Key, int]:
    counts: dict[Key, int] = {}
    for model, region, state, nodes in rows:
        counts[model, region, state] = counts.get((model, region, state), 0) + int(nodes)
    return counts


class FleetGauge:
    """Sets the gauge to a census; a combination seen before and now gone drops to 0 (in
    multiprocess mode a label set cannot be removed, and a stale count would stay)."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._seen: set[Key] = set()

    def show(self, counts: Mapping[Key, int]) -> None:
        for key in self._seen - counts.keys():
            self._gauge.labels(*key).set(0)
        for key, nodes in counts.items():
            self._gauge.labels(*key).set(nodes)
        self._seen |= counts.keys()
