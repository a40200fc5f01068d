"""The Redis transport of every process that uses Redis: one connection, commands pipelined.

redis-py's asyncio client costs more Python per command than the whole limit decision (pool
checkout, command objects, parsing). Here a call writes its command and awaits its reply,
which arrives in order on the one connection; hiredis (C) parses. Replies to calls that timed
out are read and dropped, so the order never slips.

This is the one place where Redis trouble (no connection, a timeout, an error reply) becomes
a domain error: :class:`crosslogic.errors.Unavailable` naming "Redis". The Lua scripts live
beside the code that runs them; :func:`read_script` reads one from its package.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, cast

import hiredis

from crosslogic.errors import Unavailable


def unavailable(detail: str) -> Unavailable:
    return Unavailable("Redis", detail)


def read_script(package: str, name: str) -> str:
    """The text of a Lua script shipped in ``package`` (``"crosslogic.billing"``)."""
    return (resources.files(package) / name).read_text()


@functools.cache
def script_sha(script: str) -> str:
    """EVALSHA's name of a script (hashed once: scripts run on every request)."""
    return hashlib.sha1(script.encode()).hexdigest()


def encode(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reader = hiredis.Reader()
        self.closed = False
        self._outbox: list[bytes] = []
        self._written: list[asyncio.Future[None]] = []  # resolved once the batch is written
        self._draining: list[asyncio.Future[None]] = []  # written, not all in the kernel yet

    def send(
        self,
        command: bytes,
        future: asyncio.Future[Any],
        *,
        written: asyncio.Future[None] | None = None,
    ) -> None:
        """Queue a command; everything queued in one event-loop turn leaves in one write
        (one syscall for many concurrent requests instead of one each). ``written`` is
        resolved when that write has been handed to the kernel."""
        self.pending.append(future)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(command)
        if written is not None:
            self._written.append(written)

    def _flush(self) -> None:
        data, self._outbox = b"".join(self._outbox), []
        written, self._written = self._written, []
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            # what the kernel did not take yet waits in the transport: "written" only then
            self._draining += written
            if not self.transport.get_write_buffer_size():
                self.resume_writing()
        else:
            for future in written:
                if not future.done():
                    future.set_exception(unavailable("connection lost"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        # resume_writing is called each time the transport's own buffer empties
        self.transport.set_write_buffer_limits(high=0)

    def resume_writing(self) -> None:
        draining, self._draining = self._draining, []
        for future in draining:
            if not future.done():
                future.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.pending.popleft()
            if not future.done():  # its caller may have timed out already
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        draining, self._draining = self._draining, []
        for waiting in draining:
            if not waiting.done():
                waiting.set_exception(unavailable(f"connection lost: {exc}"))
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(unavailable(f"connection lost: {exc}"))


def _outcome(done: asyncio.Future[Any], on_reply: Callable[[Any], None]) -> None:
    if done.cancelled():
        return
    error = done.exception()
    if error is None and isinstance(done.result(), hiredis.ReplyError):
        error = unavailable(f"error reply: {done.result()}")
    on_reply(done.result() if error is None else error)


class PipelinedRedis:
    """Redis commands over one pipelined connection, reconnecting on demand."""

    def __init__(self, host: str, port: int, *, password: str = "", timeout: float) -> None:
        self._host, self._port, self._password = host, port, password
        self._timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._conn
            if current is not None and not current.closed:
                return current
            loop = asyncio.get_running_loop()
            try:
                _, fresh = await asyncio.wait_for(
                    loop.create_connection(_Connection, self._host, self._port), self._timeout
                )
            except (OSError, TimeoutError) as exc:
                raise unavailable(f"cannot connect to {self._host}:{self._port}") from exc
            self._conn = fresh
            if self._password:
                await self.call("AUTH", self._password)
            return fresh

    async def call(self, *args: str | bytes | int) -> Any:
        """The reply to one command; Unavailable when there is none in time or it is an
        error reply (WRONGTYPE, NOSCRIPT...: never an answer the caller can use)."""
        reply = await self.reply(*args)
        if isinstance(reply, hiredis.ReplyError):
            raise unavailable(f"error reply: {reply}")
        return reply

    async def reply(self, *args: str | bytes | int, asking: bool = False) -> Any:
        """The reply to one command, an error reply included (returned, not raised): what a
        cluster client reads redirections from. ``asking``: the command follows an ASKING
        in the same write (a slot being migrated to this node)."""
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        if asking:
            ok: asyncio.Future[Any] = loop.create_future()  # +OK, read and dropped
            ok.add_done_callback(lambda done: done.cancelled() or done.exception())
            conn.send(encode("ASKING"), ok)
        future: asyncio.Future[Any] = loop.create_future()
        conn.send(encode(*args), future)
        try:
            reply = await asyncio.wait_for(future, self._timeout)
        except TimeoutError as exc:
            raise unavailable(f"no reply within {self._timeout * 1000:.0f} ms") from exc
        return reply

    async def send_unconfirmed(
        self, *args: str | bytes | int, on_reply: Callable[[Any], None]
    ) -> None:
        """Write a command without waiting for its reply: returns once the bytes are in the
        kernel's socket buffer (they reach Redis even if this process dies right after).
        ``on_reply`` is called later with the reply, or with the Unavailable error that
        stands for it (an error reply, a lost connection)."""
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(lambda done: _outcome(done, on_reply))
        written: asyncio.Future[None] = loop.create_future()
        conn.send(encode(*args), future, written=written)
        await written

    async def load_script(self, script: str) -> None:
        """SCRIPT LOAD: later EVALSHAs find it."""
        await self.call("SCRIPT", "LOAD", script)

    async def eval_script(self, script: str, keys: list[str], args: list[int]) -> Any:
        """EVALSHA, loading the script once when Redis does not know it (NOSCRIPT)."""
        sha = script_sha(script)
        reply = await self.reply("EVALSHA", sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self.call("SCRIPT", "LOAD", script)
            reply = await self.reply("EVALSHA", sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError):
            raise unavailable(f"script failed: {reply}")
        return reply

    def slot_groups(self, keys: Sequence[str]) -> list[list[str]]:
        """One Redis holds every key: one group."""
        return [list(keys)] if keys else []

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
