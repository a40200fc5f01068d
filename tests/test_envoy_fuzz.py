"""10,000 generated requests at the Envoy listener, seeded: every one answered in bounded time,
none with a 5xx, every refusal an OpenAI error, no process down, and no request without a
valid key reaching a node.

Requests are written as raw bytes on a socket (http.client would refuse to send most of
them) and the answers read with http.client's parser. A fixed seed makes a failure
reproducible; the run is bounded by the request count, a per-request socket timeout and the
test's timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from crosslogic.stack import Stack
from tests.support.metrics import node_requests
from tests.support.protocols import over_both_protocols
from tests.support.system import MODEL
from tests.support.tenants import demo_key

stack = over_both_protocols()  # every test here runs over gRPC, then HTTP

SEED = 20261129
REQUESTS = 10_000
WORKERS = 16
ANSWER_WITHIN_S = 15.0  # far above Envoy's own timeouts (conftest: 1 s headers, 3 s request)
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass(frozen=True)
class Probe:
    raw: bytes
    method: str
    path: str
    valid_key: bool
    well_formed: bool  # written as HTTP/1.1 should be: Envoy must answer it


@dataclass(frozen=True)
class Outcome:
    probe: Probe
    status: int  # 0: the connection closed without an answer
    upstream: bool  # answered by a node or the admin API (Envoy's upstream-time header)
    body: bytes
    content_type: str


def bodies(rng: random.Random) -> bytes:
    kind = rng.randrange(16)
    messages = [{"role": "user", "content": "x" * rng.randrange(0, 50)}]
    valid = {"model": MODEL, "messages": messages, "prompt": "hi", "input": "hi", "max_tokens": 2}
    huge = rng.choice([10**30, 10**400, -1, 0, 1e308, 2**63, 2**64 + 1, 1.5, True, "7", None])
    if kind < 4:
        return json.dumps(valid).encode()
    if kind == 4:
        field = rng.choice(["max_tokens", "max_completion_tokens", "n"])
        return json.dumps({**valid, field: huge}).encode()
    if kind == 5:
        text = json.dumps(valid)
        return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"]))
    if kind == 6:
        depth = rng.choice([10, 63, 65, 200, 5000, 100_000])
        return b'{"model": "demo-llama", "x": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if kind == 8:
        return rng.choice([b"[]", b"null", b"1", b'"s"', b"{", b'{"model": NaN}', b"", b"{}"])
    if kind == 9:
        return json.dumps({**valid, "stream": rng.choice([True, 1, "true", None])}).encode()
    if kind == 10:
        model = rng.choice(["", "x" * 5000, 5, ["a"], "\ud800"])
        return json.dumps({**valid, "model": model}).encode()
    if kind == 11:
        return b'{"model": "demo-llama", "max_tokens": ' + b"9" * rng.randrange(10, 6000) + b"}"
    if kind == 12:
        return json.dumps({**valid, "stream": True, "stream_options": huge}).encode()
    if kind == 13:
        size = rng.choice([0, 1000, 100_000, 1_100_000])  # the last is over Envoy's 1 MiB: 413
        return json.dumps({**valid, "messages": "x" * size}).encode()
    if kind == 14:
        return json.dumps(valid).encode() + rng.choice([b" ", b"\x0c", b"}", b"\x00", b"garbage"])
    return json.dumps({**valid, "temperature": rng.choice([1e999, -1e999])}).encode()


def paths(rng: random.Random) -> str:
    base = rng.choice([*INFERENCE, *INFERENCE, "/v1/models", "/v1/models/demo-llama"])
    return rng.choice(
        [
            base,
            base,
            base + "/",
            "/" + base,
            base + "?x=" + "y" * rng.randrange(0, 100),
            base + ";a=b",
            base + "/../x",
            base.replace("/", "%2F", 2),
            base.upper(),
            "/v1/" + "a" * rng.randrange(0, 3000),
            "/admin/tenants",
            "/",
            "*",
            "http://evil/" + base,
            base + "#frag",
            base + "%00",
        ]
    )


def probes(stack: Stack, valid_key: str) -> list[Probe]:
    rng = random.Random(SEED)
    out = []
    for _ in range(REQUESTS):
        method = rng.choice(["POST"] * 6 + ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "X"])
        path = paths(rng)
        roll = rng.randrange(10)
        key = (
            valid_key
            if roll < 4
            else rng.choice(
                [
                    "",
                    "clk_" + "a" * 12 + "_" + "b" * 43,
                    "sk-123",
                    "clk_x",
                    valid_key + "x",
                    valid_key[:-1],
                    "A" * rng.randrange(0, 9000),
                ]
            )
        )
        body = bodies(rng) if method in ("POST", "PUT", "X") else b""
        headers = [f"Host: 127.0.0.1:{stack.settings.envoy_port}"]
        if key or roll >= 8:
            scheme = "Bearer" if roll != 9 else rng.choice(["Basic", "bearer", "Bearer  "])
            headers.append(f"Authorization: {scheme} {key}")
        headers.append(rng.choice(["Content-Type: application/json", "Content-Type: text/x"]))
        well_formed = True
        length = len(body)
        shape = rng.randrange(40)
        if shape == 0:  # a body shorter than announced: cut by the request timeout
            length += 10
        elif shape == 1:
            headers.append("X-Big: " + "h" * rng.randrange(60_000, 70_000))
        elif shape == 2:
            headers.append("Transfer-Encoding: chunked")
            well_formed = False  # both length and chunked: a codec error, may just close
        elif shape == 3:
            headers.append("x-crosslogic-cluster: model_1")
        elif shape == 4:
            method, well_formed = "G\x01T", False
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in headers)
        if method not in ("GET", "HEAD") or body:
            head += f"Content-Length: {length}\r\n"
        out.append(
            Probe(
                raw=head.encode("latin-1") + b"\r\n" + body,
                method=method,
                path=path,
                valid_key=roll < 4,
                well_formed=well_formed,
            )
        )
    return out


class Client:
    """One keep-alive connection per worker thread, opened again whenever Envoy closes it."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._sock: socket.socket | None = None

    def send(self, probe: Probe) -> Outcome:
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self._port), ANSWER_WITHIN_S)
        sock = self._sock
        with contextlib.suppress(OSError):  # Envoy may refuse early and still answer: read it
            sock.sendall(probe.raw)
        response = http.client.HTTPResponse(sock, method=probe.method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            return Outcome(probe, 0, False, b"", "")
        except TimeoutError:
            self.close()
            return Outcome(probe, -1, False, b"", "")  # no answer in time: a hang
        if response.will_close:
            self.close()
        return Outcome(
            probe,
            response.status,
            response.getheader("x-envoy-upstream-service-time") is not None,
            body,
            response.getheader("content-type") or "",
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def is_openai_error(outcome: Outcome) -> bool:
    if outcome.probe.method == "HEAD":
        return True  # no body by definition
    try:
        error = json.loads(outcome.body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return outcome.content_type.startswith("application/json") and set(error) == {
        "message",
        "type",
        "param",
        "code",
    }


@pytest.mark.timeout(300)
def test_ten_thousand_generated_requests(stack: Stack) -> None:
    key = demo_key(stack, rate_limit_rpm=1_000_000).plaintext
    generated = probes(stack, key)
    stack.supervisor.check()
    nodes_before = node_requests(stack)
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        clients = {}

        def one(probe: Probe) -> Outcome:
            import threading

            client = clients.setdefault(threading.get_ident(), Client(stack.settings.envoy_port))
            return client.send(probe)

        outcomes = list(pool.map(one, generated))
        for client in clients.values():
            client.close()
    took = time.monotonic() - started
    stack.supervisor.check()  # no process crashed
    by_status = Counter(o.status for o in outcomes)
    print(f"fuzz: {len(outcomes)} requests in {took:.1f}s: {dict(sorted(by_status.items()))}")
    assert by_status[-1] == 0, "requests left unanswered"
    server_errors = [o for o in outcomes if o.status >= 500]
    assert not server_errors, [(o.status, o.probe.raw[:120], o.body[:200]) for o in server_errors]
    silent = [o for o in outcomes if o.status == 0 and o.probe.well_formed]
    assert not silent, [o.probe.raw[:200] for o in silent]
    not_json = [o for o in outcomes if o.status >= 400 and not is_openai_error(o)]
    assert not not_json, [(o.status, o.probe.raw[:120], o.body[:200]) for o in not_json[:5]]
    # nothing reached a node without the valid key, and nothing else reached one uncounted
    # (every path naming "models" is answered by the admin API, not a node)
    at_nodes = [o for o in outcomes if o.upstream and "models" not in o.probe.path]
    assert all(o.probe.valid_key for o in at_nodes)
    assert all(o.probe.valid_key for o in outcomes if 200 <= o.status < 300)
    assert node_requests(stack) - nodes_before == len(at_nodes)
