"""The HTTP edge of ext_authz: Envoy's HTTP ext_authz protocol on asyncio + httptools.

One :class:`AuthzProtocol` per connection (Envoy keeps HTTP/1.1 connections open). A
request is decided from the parser's completion callback: an outcome known at once (no key,
a cached key refused, an allow needing no Redis) is written there and then, with no task;
one that waits on Redis or Postgres gets a task. Answers leave in request order whatever
order they are ready in, so a pipelining client is answered correctly. Malformed input, an
upgrade, a head over ``MAX_HEAD_BYTES`` or a body over ``MAX_REQUEST_BYTES`` (what Envoy
sends at most) is answered once with an error and the connection closed; nothing a peer
sends raises out of the protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httptools

from crosslogic.contracts.journal import BOOT_HEADER, DEFAULT_GATEWAY, GATEWAY_HEADER
from crosslogic.contracts.routing import REGION_HEADER
from crosslogic.extauthz.authorizer import Authorizer, Pending
from crosslogic.extauthz.http_answers import HttpAnswers, denial
from crosslogic.extauthz.verdict import CheckInput, Refused, Verdict
from crosslogic.lifecycle import run_until_signalled
from crosslogic.openai_errors import ApiError, invalid_request

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # as envoy_config.MAX_REQUEST_BYTES: Envoy sends no more
MAX_HEAD_BYTES = 64 * 1024  # Envoy's own limit on a request's headers is 60 KiB
MAX_PENDING = 64  # answers owed on one connection before it is read no further

MALFORMED = invalid_request("Malformed request to the authorization service.")
TOO_LARGE = ApiError(413, "The request body is too large.", "invalid_request_error")
HEAD_TOO_LARGE = ApiError(431, "The request headers are too large.", "invalid_request_error")

_WANTED = {
    b"authorization": "authorization",
    b"x-request-id": "request_id",
    REGION_HEADER.encode(): "region",
    BOOT_HEADER.encode(): "boot",
    GATEWAY_HEADER.encode(): "gateway",
}


class _Refuse(Exception):
    """Raised from a parser callback: answer ``error`` and close."""

    def __init__(self, error: ApiError) -> None:
        self.error = error


class AuthzProtocol(asyncio.Protocol):
    """One connection from Envoy."""

    def __init__(self, authorizer: Authorizer, answers: HttpAnswers) -> None:
        self._authorizer = authorizer
        self._answers = answers
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._owed: deque[bytes | asyncio.Task[bytes]] = deque()
        self._closing = False
        self._paused = False
        self._start_request()

    def _start_request(self) -> None:
        self._url = b""
        self._head = 0
        self._found: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for owed in self._owed:
            if isinstance(owed, asyncio.Task):
                owed.cancel()
        self._owed.clear()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except _Refuse as refusal:
            self._fail(refusal.error)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause.error if isinstance(cause, _Refuse) else MALFORMED)
        except httptools.HttpParserUpgrade:
            # the request itself was answered; what follows it is not HTTP/1.1 any more
            self._closing = True
            self._ready(None)
        except httptools.HttpParserError:
            if self._closing:  # bytes after a request that asked to close: not read
                self._ready(None)
            else:
                self._fail(MALFORMED)

    def eof_received(self) -> bool:
        self._closing = True
        if not self._owed and self._transport is not None:
            self._transport.close()
        return True  # half-open until what is owed is written

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._head += len(url)
        if self._head > MAX_HEAD_BYTES:
            raise _Refuse(HEAD_TOO_LARGE)
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head += len(name) + len(value)
        if self._head > MAX_HEAD_BYTES:
            raise _Refuse(HEAD_TOO_LARGE)
        lower = name.lower()
        field = _WANTED.get(lower)
        if field is not None:
            self._found[field] = value.decode("latin-1")
        elif lower == b"content-length" and value.isdigit() and int(value) > MAX_REQUEST_BYTES:
            raise _Refuse(TOO_LARGE)  # before the body is read at all

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_REQUEST_BYTES:
            raise _Refuse(TOO_LARGE)
        self._body.append(body)

    def on_message_complete(self) -> None:
        found = self._found
        method = self._parser.get_method().decode("latin-1")
        request = CheckInput(
            method=method,
            path=self._url.decode("latin-1"),
            authorization=found.get("authorization", ""),
            request_id=found.get("request_id", ""),
            body=b"".join(self._body),
            region=found.get("region"),
            boot=found.get("boot") or None,
            gateway=found.get("gateway") or DEFAULT_GATEWAY,
        )
        close = not self._parser.should_keep_alive()
        head_only = method == "HEAD"
        self._start_request()
        if close:  # closed once this answer (and any before it) is written
            self._closing = True
        step = self._authorizer.start(request)
        if isinstance(step, tuple):
            self._owe(self._render(step[1], head_only, close))
        else:
            task = asyncio.get_running_loop().create_task(self._answer(step, head_only, close))
            task.add_done_callback(self._ready)
            self._owe(task)

    # answers, in request order

    async def _answer(self, step: Pending, head_only: bool, close: bool) -> bytes:
        _, verdict = await step  # never raises: the authorizer refuses what fails
        return self._render(verdict, head_only, close)

    def _render(self, verdict: Verdict, head_only: bool, close: bool) -> bytes:
        try:
            return self._answers.answer(verdict, head_only=head_only, close=close)
        except Exception as exc:  # a value that cannot be a header: a bug of ours, refused
            _, refusal = self._authorizer.refuse(exc)
            return self._answers.answer(refusal, head_only=head_only, close=close)

    def _owe(self, answer: bytes | asyncio.Task[bytes]) -> None:
        if not self._owed and isinstance(answer, bytes):
            self._write(answer)
            return
        self._owed.append(answer)
        if len(self._owed) >= MAX_PENDING and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _ready(self, _: Any) -> None:
        owed = self._owed
        while owed:
            head = owed[0]
            if isinstance(head, asyncio.Task):
                if not head.done():
                    return
                owed.popleft()
                if head.cancelled():
                    continue
                self._write(head.result())
            else:
                owed.popleft()
                self._write(head)
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if self._closing and self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._transport.write(data)
        if self._closing and not self._owed:
            self._transport.close()

    def _fail(self, error: ApiError) -> None:
        self._closing = True
        self._owe(denial(Refused(error), close=True))
        self._ready(None)


async def serve_http(
    authorizer: Authorizer,
    *,
    host: str,
    port: int,
    tasks: tuple[asyncio.Task[Any], ...] = (),
) -> None:
    """Serve until SIGINT/SIGTERM or until one of ``tasks`` ends (see lifecycle); the port is
    shared by every ext_authz process (SO_REUSEPORT), as the gRPC server's is."""
    answers = HttpAnswers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AuthzProtocol(authorizer, answers), host, port, reuse_port=True, backlog=1024
    )
    log.info("listening on %s:%d (HTTP ext_authz)", host, port)
    try:
        await run_until_signalled(tasks)
    finally:
        server.close()
