"""The admin API: health, readiness, node registration input checks, migrations."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from crosslogic.db.connection import connect
from crosslogic.db.migrate import migrate
from crosslogic.stack import Stack


def call(
    url: str, body: object = None, *, token: str | None = None, method: str | None = None
) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=data, method=method or ("POST" if data else "GET"), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_health_and_ready(stack: Stack) -> None:
    assert call(f"{stack.admin_url}/health") == (200, {"status": "ok"})
    status, body = call(f"{stack.admin_url}/ready")
    assert status == 200 and body["checks"] == {"postgres": "ok", "redis": "ok"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "demo-llama", "address": "127.0.0.1", "port": "80"}, "port"),
        ({"model": "demo-llama", "address": "127.0.0.1", "port": 80, "colour": "red"}, "colour"),
        ({"model": "demo-llama", "port": 80}, "address"),
        ({"model": "nope", "address": "127.0.0.1", "port": 80}, "model"),
        ({"model": "demo-llama", "address": "127.0.0.1", "port": 80, "region": "mars"}, "region"),
    ],
)
def test_bad_registrations_are_refused_clearly(stack: Stack, body: object, param: str) -> None:
    status, reply = call(
        f"{stack.admin_url}/admin/nodes/register", body, token=stack.settings.admin_token
    )
    assert status in (400, 404)
    assert reply["error"]["param"] == param  # type: ignore[index]


def test_heartbeat_of_unknown_node_asks_it_to_register(stack: Stack) -> None:
    status, reply = call(
        f"{stack.admin_url}/admin/nodes/ghost/heartbeat", {}, token=stack.settings.admin_token
    )
    assert status == 404 and reply["error"]["code"] == "node_not_found"  # type: ignore[index]


def test_models_endpoint_is_not_open_without_envoy(stack: Stack) -> None:
    status, _ = call(f"{stack.admin_url}/v1/models")
    assert status == 401


def test_migrate_twice_is_a_no_op(stack: Stack) -> None:
    async def go() -> list[str]:
        conn = await connect(stack.settings)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    assert asyncio.run(go()) == []


def test_admin_needs_the_operator_token(stack: Stack) -> None:
    assert stack.demo is not None
    for token in (None, "wrong", stack.demo.api_key):  # a tenant key is not an operator token
        status, reply = call(f"{stack.admin_url}/admin/nodes", token=token)
        assert status == 401 and reply["error"]["code"] == "invalid_admin_token"  # type: ignore[index]
