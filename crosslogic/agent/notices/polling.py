"""The poll loop every metadata watcher shares: call a check until it finds a notice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from crosslogic.agent.notices import MetadataError, Notice

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[Notice | None]]
FAILURES = (aiohttp.ClientError, TimeoutError, MetadataError)


async def poll(check: Check, *, interval_s: float, what: str) -> Notice:
    """Call ``check`` every ``interval_s`` until it returns a notice. A failing check is
    logged once per run of failures (not every half second) and retried."""
    failing = False
    while True:
        try:
            notice = await check()
        except FAILURES as exc:
            if not failing:
                log.warning("%s: cannot read the interruption notice (%s); retrying", what, exc)
            failing = True
        else:
            if failing:
                log.info("%s: the metadata endpoint answers again", what)
            failing = False
            if notice is not None:
                return notice
        await asyncio.sleep(interval_s)


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
