"""Hostile input through Envoy: refused with a 4xx OpenAI error, never a 5xx, never a pass.

Each test here is one defect a tester found with generated bad requests.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from crosslogic import envoy_config
from crosslogic.node.server import FAULT_HEADER
from crosslogic.ports import with_free_ports
from crosslogic.probes import http_ok
from crosslogic.processes import envoy_binary
from crosslogic.settings import load
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.metrics import node_requests
from tests.support.protocols import over_both_protocols
from tests.support.ratelimits import set_limit
from tests.support.system import MODEL
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until

stack = over_both_protocols()  # every test here runs over gRPC, then HTTP

CHAT = "/v1/chat/completions"


def send(
    stack: Stack,
    path: str,
    body: bytes | None,
    *,
    key: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.settings.envoy_port, timeout=30)
    try:
        sent = {"content-type": "application/json", **(headers or {})}
        if key is None and stack.demo is not None:
            key = stack.demo.api_key
        if key:
            sent["authorization"] = f"Bearer {key}"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def chat_body(**fields: Any) -> bytes:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(payload).encode()


def openai_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The error object of an OpenAI-shaped error response (asserting that shape)."""
    assert headers.get("content-type", "").startswith("application/json"), (status, body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 10**30},
        {"max_completion_tokens": 10**400},
        {"max_tokens": 1e300},
        {"n": 10**20},
        {"max_tokens": -5},
    ],
)
def test_huge_token_fields_are_400_and_never_pass_a_limit(
    limited: Stack, fields: dict[str, Any]
) -> None:
    stack = limited
    tenant, env = fresh_tenant(stack)
    key = key_in(stack, tenant, env)
    set_limit(stack, "key", key.api_key_id, requests_per_minute=2)
    param = next(iter(fields))
    for _ in range(6):
        status, headers, body = send(stack, CHAT, chat_body(**fields), key=key.plaintext)
        assert status == 400, body
        assert openai_error(status, headers, body)["param"] == param
    # the limit was never bypassed nor spent by the refusals: exactly 2 of 6 valid are served
    statuses = [send(stack, CHAT, chat_body(max_tokens=1), key=key.plaintext)[0] for _ in range(6)]
    assert statuses.count(200) == 2 and statuses.count(429) == 4


@pytest.mark.parametrize(
    "body",
    [
        chat_body().decode().encode("utf-16"),
        chat_body().decode().encode("utf-16-le"),
        chat_body().decode().encode("utf-32"),
        b"\xef\xbb\xbf" + chat_body(),
        b'{"model": "demo-llama", "messages": [], "temperature": NaN}',
        b'{"model": "demo-llama", "messages": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "demo-llama", "messages": [], "x": ' + b"[" * 70 + b"]" * 70 + b"}",
        b'{"model": "demo-llama", "messages": [' + b'{"content": ' * 3000 + b"1" + b"}" * 3000,
        b'{"model": "demo-llama", "max_tokens": ' + b"9" * 10_000 + b"}",
        b'["demo-llama"]',
        b"\xff\xfe\x00",
    ],
    ids=[
        "utf16",
        "utf16le",
        "utf32",
        "bom",
        "nan",
        "deep",
        "deeper-than-64",
        "deep-unclosed",
        "huge-int",
        "array",
        "garbage",
    ],
)
def test_odd_encodings_and_nesting_are_400(stack: Stack, body: bytes) -> None:
    before = node_requests(stack)
    status, headers, raw = send(stack, CHAT, body)
    assert status == 400, raw[:300]
    assert openai_error(status, headers, raw)["type"] == "invalid_request_error"
    assert node_requests(stack) == before


def test_an_upstream_reset_reaches_the_client_as_json(stack: Stack) -> None:
    status, headers, body = send(
        stack, CHAT, chat_body(max_tokens=1), headers={FAULT_HEADER: "reset"}
    )
    assert status == 503
    error = openai_error(status, headers, body)
    assert error["type"] == "server_error" and error["code"] == "gateway_error"


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_slow_client_is_cut_by_the_timeout(stack: Stack, part: str) -> None:
    assert stack.demo is not None
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if part == "body":
        body = chat_body()
        head += f"Authorization: Bearer {stack.demo.api_key}\r\nContent-Length: {len(body)}\r\n\r\n"
        head += body[:10].decode()
    # the socket timeout only keeps a broken gateway from hanging the suite; Envoy's
    # timeouts (conftest: 1 s headers, 3 s request) end the connection long before
    with socket.create_connection(("127.0.0.1", stack.settings.envoy_port), timeout=20) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert time.monotonic() - started < 20
    if answer:  # Envoy answers 408 when it can, then closes
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 408 " in status_line, answer[:200]
        assert b'"error"' in rest


def wait_for_usage_row(stack: Stack, request_id: str) -> None:
    wait_until(
        "billing to record the request",
        lambda: run_db(stack, "SELECT 1 FROM usage_records WHERE request_id = $1", request_id),
        timeout=15,
    )


UNKNOWN = [
    "/v1/chat/completions/",
    "/v1/chat/completions/x",
    "/v1/chat/completions;a=b",
    "/v1/chat/completions/../x",
    "/v1/chat/completions/%2e%2e/x",
    "/V1/chat/completions",
    "/v1/embeddings/",
    "/v1/models/a/b",
    "/v1/modelsx",
    "/v1",
    "/",
    "/admin/tenants",
    "/metrics",
    "/health",
]


def test_unknown_paths_are_404_reach_no_node_and_are_never_billed(stack: Stack) -> None:
    before = node_requests(stack)
    ids = []
    for path in UNKNOWN:
        for method in ("POST", "GET"):
            status, headers, body = send(stack, path, chat_body(max_tokens=1), method=method)
            assert status == 404, (path, method, body)
            assert openai_error(status, headers, body)["code"] == "unknown_url"
            ids.append(headers["x-request-id"])
    for path in ("/v1/chat%2Fcompletions", "/v1/chat%2fcompletions", "/v1%5Cchat/completions"):
        status, headers, body = send(stack, path, chat_body(max_tokens=1))
        assert status in (400, 404), (path, body)
        openai_error(status, headers, body)
    assert node_requests(stack) == before
    # the same endpoint, spelled differently: normalised by Envoy, then served and billed once
    for path in ("//v1/chat/completions", "/v1/./chat/completions", CHAT + "?x=1"):
        status, headers, body = send(stack, path, chat_body(max_tokens=1))
        assert status == 200, (path, body)
    wait_for_usage_row(stack, headers["x-request-id"])
    # billing reads the log in order: the last served request is in, so no refusal is
    rows = run_db(stack, "SELECT request_id FROM usage_records WHERE request_id = ANY($1)", ids)
    assert rows == []


def test_models_route_is_exact_and_get_only(stack: Stack) -> None:
    status, headers, body = send(stack, "/v1/models", None, method="GET")
    assert status == 200 and json.loads(body)["data"]
    status, headers, body = send(stack, "/v1/models", b"{}", method="POST")
    assert status == 405
    assert openai_error(status, headers, body)["code"] == "method_not_allowed"


def test_connections_over_the_limit_are_refused(tmp_path: Path) -> None:
    """A bare Envoy rendered with ENVOY_MAX_CONNECTIONS=3: the fourth client is closed at once
    (the overload manager's global limit), and Envoy counts it. (Without an xDS server Envoy
    is ready only after its initial fetch times out: about 15 s of waiting, no work.)"""
    settings = with_free_ports(load({})).with_overrides(
        data_dir=tmp_path, envoy_max_connections=3, envoy_request_headers_timeout=30.0
    )
    settings.access_log.touch()
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_config.render(settings))
    admin = f"http://127.0.0.1:{settings.envoy_admin_port}"
    envoy = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    held: list[socket.socket] = []
    try:
        wait_until("Envoy", lambda: http_ok(f"{admin}/ready"))
        for _ in range(3):  # three clients in the middle of their headers
            sock = socket.create_connection(("127.0.0.1", settings.envoy_port), timeout=20)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
            held.append(sock)
        wait_until("3 connections", lambda: envoy_stat(admin, "downstream_cx_active") >= 3)
        with socket.create_connection(("127.0.0.1", settings.envoy_port), timeout=20) as extra:
            extra.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = read_until_closed(extra)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed (or reset) without a byte
        wait_until(
            "Envoy to count the overflow",
            lambda: envoy_stat(admin, "downstream_global_cx_overflow") >= 1,
            timeout=5,
        )
    finally:
        for sock in held:
            sock.close()
        envoy.terminate()
        envoy.wait(10)


def envoy_stat(admin: str, suffix: str) -> int:
    """The sum of the OpenAI listener's stats ending in ``suffix``."""
    with urllib.request.urlopen(f"{admin}/stats?format=json&filter={suffix}$", timeout=5) as r:
        stats = json.load(r)["stats"]
    return sum(int(s["value"]) for s in stats if s["name"].startswith("listener.127.0.0.1_"))
