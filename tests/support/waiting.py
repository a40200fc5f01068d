"""Waiting on a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


def wait_until(
    what: str,
    probe: Callable[[], T],
    *,
    timeout: float = 30.0,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that; ``check`` (if given)
    runs between polls and may raise (a crashed process). TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(POLL_S)
    return value
