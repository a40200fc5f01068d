"""How every long-running process ends: on SIGINT/SIGTERM, or with an error when one of its
main tasks ends.

A process whose background loop died but whose server still answers is half dead (a stale
catalog, limits never reloaded, usage never billed) and nobody would notice. So a main task
that ends, however it ends, ends the process with an error, and the supervisor (or the
container runtime) starts a whole new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TaskDied(RuntimeError):
    """A main task ended, which none should; the cause, if it raised, is chained."""


async def run_until_signalled(tasks: Iterable[asyncio.Task[Any]] = ()) -> None:
    """Wait for SIGINT or SIGTERM (return) or for one of ``tasks`` to end (raise TaskDied);
    either way every task is cancelled and awaited before this returns.

    The signal handlers stay until the loop closes: `crosslogic up` passes Ctrl-C to every
    child and its supervisor then sends SIGTERM, and that second signal must not cut the
    cleanup short.
    """
    tasks = list(tasks)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    signalled = asyncio.create_task(stop.wait(), name="signal")
    try:
        done, _ = await asyncio.wait({signalled, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (signalled, *tasks):
            task.cancel()
        for task in tasks:
            # a task cut short keeps its error to itself: the process is ending anyway
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in tasks:
        if task in done:
            error = None if task.cancelled() else task.exception()
            raise TaskDied(f"task {task.get_name()} ended: {error!r}") from error


def exit_code(died: TaskDied, *, process: str) -> int:
    """Log why ``process`` ends and return its exit code (non-zero: its supervisor restarts
    it)."""
    log.error("%s %s; exiting", process, died, exc_info=died.__cause__)
    return 1


def interrupt_on_sigterm() -> None:
    """SIGTERM while starting behaves like Ctrl-C: Stack.start() stops what it had started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def wait_for_signal(check: Callable[[], None]) -> None:
    """Until SIGINT or SIGTERM (a stack's foreground process: `up`, `serve`), calling
    ``check`` (the supervisor's: a child that keeps dying raises) twice a second."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(0.5):
        check()
