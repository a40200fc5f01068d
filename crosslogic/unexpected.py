"""Unexpected exceptions at a request edge: counted, logged in one line, and rate-limited.

An edge (a gRPC servicer, an HTTP app) turns any exception its own mapping did not foresee
into a refusal. A bug hit by every request must not write a multi-page traceback per request
(the log fills the disk before anyone reads it), so this logs one line per exception type and
place at most once per ``every`` seconds, saying how many were not logged in between. The
counter (``crosslogic_unexpected_errors_total{edge, exception}``) counts all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter


class UnexpectedErrors:
    def __init__(
        self,
        *,
        edge: str,
        registry: CollectorRegistry,
        logger: logging.Logger,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._edge = edge
        self._log = logger
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._counter = Counter(
            "crosslogic_unexpected_errors",
            "exceptions a request edge did not expect, answered with a refusal",
            ["edge", "exception"],
            registry=registry,
        )

    def record(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self._counter.labels(self._edge, name).inc()
        where = _origin(exc)
        now = self._clock()
        key = f"{name}@{where}"
        if now - self._last.get(key, -self._every) < self._every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        self._log.error(
            "%s: unexpected %s at %s: %s (refused%s)",
            self._edge,
            name,
            where,
            str(exc)[:200],
            f"; {skipped} more since the last line" if skipped else "",
        )


def _origin(exc: BaseException) -> str:
    """file:line of the innermost frame: enough to find the bug without the traceback."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
