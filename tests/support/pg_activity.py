"""Who holds a PostgreSQL server's connections (pg_stat_activity), and load that makes the
admin API's pools grow to their size."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from crosslogic.db.connection import connect
from crosslogic.settings import Settings
from tests.support.admin import Admin

SAMPLE_EVERY_S = 0.1

ACTIVITY = (
    "SELECT coalesce(application_name, '') AS name, count(*) AS n FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
    "GROUP BY 1"
)


def sample_connections(
    settings: Settings,
    *,
    seconds: float,
    until: Callable[[dict[str, int]], bool] = lambda seen: True,
    timeout: float = 20.0,
) -> dict[str, int]:
    """The most client connections seen under each application_name on ``settings``' server,
    sampled every SAMPLE_EVERY_S on one connection (not counted) for ``seconds``, and
    further until ``until(seen)`` holds (TimeoutError after ``timeout``)."""

    async def go() -> dict[str, int]:
        most: Counter[str] = Counter()
        conn = await connect(settings)
        try:
            started = time.monotonic()
            while time.monotonic() - started < seconds or not until(dict(most)):
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"connections seen in {timeout}s: {dict(most)}")
                for row in await conn.fetch(ACTIVITY):
                    most[row["name"]] = max(most[row["name"]], row["n"])
                await asyncio.sleep(SAMPLE_EVERY_S)
        finally:
            await conn.close()
        return dict(most)

    return asyncio.run(go())


@contextlib.contextmanager
def busy_admin(
    admin: Admin, *, path: str = "/admin/audit?limit=500", clients: int = 12
) -> Iterator[None]:
    """``clients`` threads calling ``path`` without pause while the block runs: more requests
    at once than the admin pool has connections."""
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            admin("GET", path)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
