"""The admin API: health, readiness, node registration input checks, migrations."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from crosslogic.admin.errors import api_error
from crosslogic.db.connection import connect
from crosslogic.db.migrate import migrate
from crosslogic.errors import Conflict, DomainError, Invalid, NotFound, Unavailable
from crosslogic.stack import Stack
from tests.support.admin import Admin
from tests.support.db import run_db
from tests.support.tenants import fresh_tenant


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
        f"{stack.admin_url}/admin/nodes/register",
        body,
        token=stack.settings.node_registration_token,
    )
    assert status in (400, 404)
    assert reply["error"]["param"] == param  # type: ignore[index]


def test_heartbeat_of_unknown_node_asks_it_to_register(stack: Stack) -> None:
    status, reply = call(
        f"{stack.admin_url}/admin/nodes/ghost/heartbeat", {}, token="clnc_forgotten"
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


def test_the_demo_is_seeded_through_the_audited_path_as_system(stack: Stack) -> None:
    assert stack.demo is not None
    rows = run_db(
        stack,
        "SELECT actor, action FROM audit_log WHERE entity_id = ANY($1::text[]) ORDER BY id",
        [stack.demo.tenant_id, stack.demo.environment_id, stack.demo.api_key_id],
    ) + run_db(
        stack,
        "SELECT a.actor, a.action FROM audit_log a JOIN api_keys k ON k.key_id = a.entity_id "
        "WHERE k.id = $1",
        stack.demo.api_key_id,
    )
    actions = {(r["actor"], r["action"]) for r in rows}
    assert {("system", "tenant.create"), ("system", "environment.create")} <= actions
    assert ("system", "api_key.create") in actions


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Invalid("bad", param="x"), 400, "invalid_request"),
        (NotFound("tenant", "t1"), 404, "tenant_not_found"),
        (Conflict("taken", code="tenant_exists", param="name"), 409, "tenant_exists"),
        (Unavailable("PostgreSQL", "restarting"), 503, "database_unavailable"),
    ],
)
def test_domain_errors_map_to_one_status_each(error: DomainError, status: int, code: str) -> None:
    mapped = api_error(error)
    assert mapped is not None and (mapped.status, mapped.code) == (status, code)
    assert mapped.param == (None if status == 503 else error.param)


def test_a_domain_error_without_a_status_is_a_bug() -> None:
    assert api_error(DomainError("what is this")) is None


def test_text_postgres_cannot_store_is_a_400_not_a_500(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    status, body = admin(
        "POST", f"/admin/tenants/{tenant}/credits", {"amount_usd": "1", "note": "a\x00b"}
    )
    assert status == 400, body
    assert "NUL" in body["error"]["message"]
    assert (
        run_db(stack, "SELECT count(*) FROM credit_grants WHERE tenant_id = $1", tenant)[0][0] == 0
    )
