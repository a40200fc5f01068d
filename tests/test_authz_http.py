"""ext_authz's HTTP edge: the server on a real socket (keep-alive, pipelining, bounds,
malformed input), arbitrary bytes from hypothesis, and the same verdict answered alike by
both edges. The decision itself is tested in test_authz_decision.py (one core for both)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from crosslogic.contracts import routing
from crosslogic.extauthz import keys
from crosslogic.extauthz.authorizer import Authorizer, AuthzMetrics
from crosslogic.extauthz.decision import KeyRecord, Model
from crosslogic.extauthz.http_answers import REMOVE_HEADER, HttpAnswers
from crosslogic.extauthz.http_server import MAX_REQUEST_BYTES, AuthzProtocol
from crosslogic.extauthz.service import AuthorizationService
from crosslogic.extauthz.store import KeyCache
from tests.support.key_records import key_record

GOOD = keys.generate().plaintext  # its record is known
SLOW = keys.generate().plaintext  # known, after the test lets the lookup finish
BROKE = keys.generate().plaintext  # its tenant's quota is used up
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


def authorizer(release: asyncio.Event | None = None) -> Authorizer:
    async def fetch(key_hash: bytes) -> KeyRecord | None:
        if key_hash == keys.hash_key(SLOW) and release is not None:
            await release.wait()
        if key_hash == keys.hash_key(BROKE):
            return key_record(quota="credits_exhausted")
        known = (keys.hash_key(GOOD), keys.hash_key(SLOW))
        return key_record(allowed_models=frozenset({"m"})) if key_hash in known else None

    made = Authorizer(cache=KeyCache(fetch, ttl=60.0), metrics=AuthzMetrics(CollectorRegistry()))
    made.catalog = {"m": Model(id=3, name="m")}
    return made


def request(
    method: str = "POST", path: str = "/v1/chat/completions", *, key: str = GOOD, body: bytes = b""
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: extauthz\r\nauthorization: Bearer {key}\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


class Responses:
    """Every response in a byte stream, parsed as Envoy's codec would."""

    def __init__(self, *, head_only: bool = False) -> None:
        self.items: list[dict[str, Any]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only

    def feed(self, data: bytes) -> Responses:
        self._parser.feed_data(data)
        return self

    def on_message_begin(self) -> None:
        self.items.append({"headers": {}, "body": b""})

    def on_header(self, name: bytes, value: bytes) -> None:
        self.items[-1]["headers"][name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> bool:
        self.items[-1]["status"] = self._parser.get_status_code()
        return self._head_only  # True: no body follows (a response to HEAD)

    def on_body(self, body: bytes) -> None:
        self.items[-1]["body"] += body


async def exchange(
    sent: bytes,
    *,
    made: Authorizer | None = None,
    during: Callable[[], Awaitable[None]] | None = None,
) -> tuple[bytes, bool]:
    """What the server answers ``sent`` on one connection, and whether it then closed."""
    loop = asyncio.get_running_loop()
    made = made or authorizer()
    server = await loop.create_server(lambda: AuthzProtocol(made, HttpAnswers()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    await writer.drain()
    if during is not None:
        await during()
    received, closed = b"", False
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        received += chunk
    writer.close()
    server.close()
    return received, closed


def test_keep_alive_answers_each_request_and_allows_with_what_envoy_reads() -> None:
    sent = request(body=CHAT) + request(key="nope" * 10) + request("GET", "/v1/models")
    received, closed = asyncio.run(exchange(sent))
    first, unknown, models = Responses().feed(received).items
    assert not closed
    assert first["status"] == 200 and first["body"] == b""
    assert first["headers"][routing.CLUSTER_HEADER] == "model_3"
    assert first["headers"][REMOVE_HEADER] == "authorization"
    assert first["headers"]["tenant_id"] == "t" and first["headers"]["model_id"] == "3"
    assert unknown["status"] == 401
    assert json.loads(unknown["body"])["error"]["code"] == "invalid_api_key"
    assert models["headers"][routing.ALLOWED_MODELS_HEADER] == "m"


def test_pipelined_answers_keep_request_order() -> None:
    async def run() -> tuple[bytes, bool]:
        release = asyncio.Event()

        async def later() -> None:
            await asyncio.sleep(0.2)  # the second (immediate) answer is ready long before
            release.set()

        sent = request(key=SLOW, body=CHAT) + request(key="")
        return await exchange(sent, made=authorizer(release), during=later)

    received, _ = asyncio.run(run())
    first, second = Responses().feed(received).items
    assert (first["status"], second["status"]) == (200, 401)


def test_bounds_and_malformed_input_are_answered_once_then_closed() -> None:
    big = f"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {MAX_REQUEST_BYTES + 1}\r\n\r\n"
    cases = [
        (big.encode(), 413),
        (b"POST /x HTTP/1.1\r\nx-long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        # an upgrade: the request is answered, then the connection closed
        (b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", 401),
        (b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
    ]
    for sent, status in cases:
        received, closed = asyncio.run(exchange(sent))
        (answer,) = Responses().feed(received).items
        assert answer["status"] == status and closed, (sent[:40], answer)
        assert json.loads(answer["body"])["error"]["message"]


def test_a_head_request_gets_no_body() -> None:
    received, _ = asyncio.run(exchange(request("HEAD", "/v1/chat/completions")))
    (answer,) = Responses(head_only=True).feed(received).items
    assert answer["status"] == 405 and int(answer["headers"]["content-length"]) > 0
    assert received.endswith(b"\r\n\r\n")


def test_a_request_that_asks_to_close_is_answered_then_closed() -> None:
    sent = request(body=CHAT).replace(b"host: extauthz\r\n", b"connection: close\r\n")
    for following in (b"", request()):  # closed at once, whether more bytes came or not
        received, closed = asyncio.run(exchange(sent + following))
        (answer,) = Responses().feed(received).items
        assert answer["status"] == 200 and answer["headers"]["connection"] == "close" and closed


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


pieces = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([request(), request(body=CHAT), request("GET", "/v1/models", key="x")]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=6), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_raise_and_every_answer_is_http(
    chunks: list[bytes], size: int
) -> None:
    async def run() -> Transport:
        protocol = AuthzProtocol(authorizer(), HttpAnswers())
        transport = Transport()
        protocol.connection_made(transport)
        data = b"".join(chunks)
        for start in range(0, len(data), size):  # any split of the stream
            protocol.data_received(data[start : start + size])
        await asyncio.sleep(0.01)  # answers awaiting the (fake) key store
        protocol.eof_received()
        return transport

    transport = asyncio.run(run())
    for answer in Responses().feed(transport.written).items:
        assert answer["status"] in (200, 400, 401, 404, 405, 413, 431), answer
        if answer["status"] != 200:
            assert json.loads(answer["body"])["error"]["type"]


def test_both_edges_answer_a_verdict_alike() -> None:
    """The gRPC and HTTP edges map one core's verdict: the same status, body, headers and
    metadata (over HTTP every metadata value is a string)."""

    async def both(raw: bytes, method: str, path: str, key: str, body: bytes) -> tuple[Any, Any]:
        made = authorizer()
        grpc = AuthorizationService(made)
        check = external_auth_pb2.CheckRequest()
        http = check.attributes.request.http
        http.method, http.path, http.raw_body = method, path, body
        http.headers["authorization"] = f"Bearer {key}"
        proto = await grpc.Check(check, None)
        received, _ = await exchange(raw, made=made)
        return proto, Responses().feed(received).items[0]

    for method, path, key, body in [
        ("POST", "/v1/chat/completions", GOOD, CHAT),
        ("POST", "/v1/chat/completions", GOOD, b'{"model": "other"}'),
        ("POST", "/v1/chat/completions", "", CHAT),
        ("GET", "/v1/models", GOOD, b""),
        ("GET", "/v1/nothing", GOOD, b""),
        ("POST", "/v1/chat/completions", BROKE, CHAT),  # 429, x-should-retry: false
    ]:
        proto, answer = asyncio.run(
            both(request(method, path, key=key, body=body), method, path, key, body)
        )
        if proto.HasField("denied_response"):
            denied = proto.denied_response
            assert answer["status"] == denied.status.code
            assert answer["body"] == denied.body.encode()
            names = [h.header.key for h in denied.headers]
            assert len(names) == len(set(names)), names  # each once
            for h in denied.headers:
                assert answer["headers"][h.header.key] == h.header.value
            continue
        assert answer["status"] == 200
        for h in proto.ok_response.headers:
            assert answer["headers"][h.header.key] == h.header.value
        assert list(proto.ok_response.headers_to_remove) == [answer["headers"][REMOVE_HEADER]]
        for name, value in json_format.MessageToDict(proto.dynamic_metadata).items():
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            assert answer["headers"][name] in (shown, shown.removesuffix(".0")), name


def test_an_allow_that_cannot_be_a_header_is_refused_as_our_error() -> None:
    made = authorizer()
    made.catalog = {"m": Model(id=3, name="m\r\nx-injected: 1")}
    received, closed = asyncio.run(exchange(request(body=CHAT), made=made))
    (answer,) = Responses().feed(received).items
    assert answer["status"] == 500 and "x-injected" not in answer["headers"] and not closed
    assert json.loads(answer["body"])["error"]["code"] == "internal_error"
