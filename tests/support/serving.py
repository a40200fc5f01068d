"""In-process HTTP servers for the tests (aiohttp apps on free ports), and plain HTTP calls."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web


class LoopThread:
    """An event loop in a background thread, so the synchronous SDK can call our servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


@contextmanager
def serving(app_factory: Callable[[], web.Application]) -> Iterator[str]:
    """Serve an app on a free port in a background loop; yields its base URL."""
    thread = LoopThread()

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app_factory(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    runner, port = thread.call(start())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        thread.call(runner.cleanup())
        thread.close()


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(url: str, *, body: object = None, raw: bytes | None = None) -> Reply:
    """A plain HTTP call for what the SDK hides: wire format, status codes, non-API routes."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return Reply(response.status, response.headers["Content-Type"], response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers["Content-Type"], error.read())
