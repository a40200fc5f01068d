"""Rate limits managed through the admin API and the command line, against the session stack.

Every subject here is created by this module (never the demo tenant), and a global limit, which
would apply to every other test's traffic, is removed again in a ``finally``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from typing import Any

import pytest

from crosslogic.contracts import channels
from crosslogic.db.connection import connect
from crosslogic.ratelimit import table_store as limits
from crosslogic.ratelimit.config import LimitRow
from crosslogic.stack import Stack
from tests.support.admin import Admin
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db


def ok(reply: tuple[int, Any]) -> Any:
    status, body = reply
    assert status == 200, body
    return body


def ok_created(reply: tuple[int, Any]) -> Any:
    status, body = reply
    assert status == 201, body
    return body


def refused(reply: tuple[int, Any], status: int) -> dict[str, Any]:
    got, body = reply
    assert got == status, body
    error: dict[str, Any] = body["error"]
    return error


def last_audit_id(stack: Stack) -> int:
    return int(run_db(stack, "SELECT coalesce(max(id), 0) FROM audit_log")[0][0])


@pytest.fixture()
def subjects(stack: Stack) -> dict[str, str]:
    """A fresh tenant, environment and key of this test's own (through the admin API)."""
    admin = Admin(stack)
    tenant = ok_created(admin("POST", "/admin/tenants", {"name": f"lim-{uuid.uuid4().hex[:12]}"}))
    env = ok_created(admin("POST", f"/admin/tenants/{tenant['id']}/environments", {"name": "prod"}))
    key = ok_created(admin("POST", f"/admin/environments/{env['id']}/keys", {"name": "lim"}))
    return {
        "tenant": tenant["id"],
        "env": env["id"],
        "key_id": key["key_id"],
        "api_key_id": key["api_key_id"],
        "plan": f"plan-{uuid.uuid4().hex[:12]}",
    }


# -- the admin API -----------------------------------------------------------------------


def test_set_list_replace_delete_is_audited(
    stack: Stack, admin: Admin, subjects: dict[str, str]
) -> None:
    tenant = subjects["tenant"]
    body = {"scope": "tenant", "subject": tenant, "requests_per_minute": 60}
    row = ok(admin("PUT", "/admin/limits", body))
    assert {k: row[k] for k in ("scope", "subject", "layer", "fail_mode")} == {
        "scope": "tenant",
        "subject": tenant,
        "layer": "tenant",
        "fail_mode": "open",
    }
    assert (row["requests_per_minute"], row["requests_per_second"]) == (60, None)
    assert ok(admin("GET", f"/admin/limits?scope=tenant&subject={tenant}"))["data"] == [row]

    # a second PUT replaces the whole row: the minute window is no longer limited
    replaced = ok(
        admin(
            "PUT",
            "/admin/limits",
            {
                "scope": "tenant",
                "subject": tenant.upper(),  # the uuid in any spelling is the same tenant
                "tokens_per_minute": 1000,
                "tokens_per_day": 50_000,
                "fail_mode": "closed",
            },
        )
    )
    assert replaced["id"] == row["id"] and replaced["subject"] == tenant
    assert (replaced["requests_per_minute"], replaced["tokens_per_minute"]) == (None, 1000)
    assert (replaced["tokens_per_day"], replaced["fail_mode"]) == (50_000, "closed")
    assert ok(admin("GET", f"/admin/limits?subject={tenant}"))["data"] == [replaced]

    deleted = ok(admin("DELETE", f"/admin/limits/{row['id']}"))
    assert deleted == replaced
    assert ok(admin("GET", f"/admin/limits?subject={tenant}"))["data"] == []
    error = refused(admin("DELETE", f"/admin/limits/{row['id']}"), 404)
    assert error["code"] == "rate_limit_not_found"

    entity = f"tenant:{tenant}:tenant"
    audit = ok(admin("GET", f"/admin/audit?entity_id={entity}"))["data"]
    assert [e["action"] for e in audit] == [
        "rate_limit.delete",
        "rate_limit.update",
        "rate_limit.create",
    ]
    assert {e["actor"] for e in audit} == {"operator:alice"}
    assert {e["entity_type"] for e in audit} == {"rate_limit"}
    assert audit[2]["before"] is None and audit[2]["after"]["requests_per_minute"] == 60
    assert audit[1]["before"]["requests_per_minute"] == 60
    assert audit[1]["after"]["tokens_per_minute"] == 1000
    assert audit[0]["before"]["id"] == row["id"] and audit[0]["after"] is None


def test_a_key_named_by_its_key_id_is_stored_by_its_uuid(
    stack: Stack, admin: Admin, subjects: dict[str, str]
) -> None:
    key_id, api_key_id = subjects["key_id"], subjects["api_key_id"]
    row = ok(
        admin("PUT", "/admin/limits", {"scope": "key", "subject": key_id, "requests_per_second": 5})
    )
    assert (row["subject"], row["layer"]) == (api_key_id, "key")
    stored = run_db(stack, "SELECT subject FROM rate_limits WHERE id = $1", row["id"])
    assert stored[0]["subject"] == api_key_id
    # listed under either name; the uuid names the same row
    for name in (key_id, api_key_id):
        assert ok(admin("GET", f"/admin/limits?scope=key&subject={name}"))["data"] == [row]
    again = ok(
        admin(
            "PUT",
            "/admin/limits",
            {"scope": "key", "subject": api_key_id, "requests_per_second": 7},
        )
    )
    assert (again["id"], again["requests_per_second"]) == (row["id"], 7)
    audit = ok(admin("GET", f"/admin/audit?entity_id=key:{api_key_id}:key"))["data"]
    assert [e["action"] for e in audit] == ["rate_limit.update", "rate_limit.create"]
    ok(admin("DELETE", f"/admin/limits/{row['id']}"))


def test_environment_and_plan_limits(stack: Stack, admin: Admin, subjects: dict[str, str]) -> None:
    env, plan = subjects["env"], subjects["plan"]
    env_row = ok(
        admin("PUT", "/admin/limits", {"scope": "environment", "subject": env, "tokens_per_day": 9})
    )
    plan_rows = [
        ok(
            admin(
                "PUT",
                "/admin/limits",
                {"scope": "plan", "subject": plan, "layer": layer, "requests_per_minute": 600},
            )
        )
        for layer in ("key", "tenant")
    ]
    assert (env_row["layer"], env_row["subject"]) == ("environment", env)
    listed = ok(admin("GET", f"/admin/limits?scope=plan&subject={plan}"))["data"]
    assert [r["layer"] for r in listed] == ["key", "tenant"]

    async def loaded() -> list[LimitRow]:
        conn = await connect(stack.settings)
        try:
            return await limits.load_rows(conn)
        finally:
            await conn.close()

    rows = asyncio.run(loaded())
    assert LimitRow(scope="environment", subject=env, layer="environment", tokens_per_day=9) in rows
    assert LimitRow(scope="plan", subject=plan, layer="tenant", requests_per_minute=600) in rows
    for row in (env_row, *plan_rows):
        ok(admin("DELETE", f"/admin/limits/{row['id']}"))


def test_a_change_is_notified_on_commit(
    stack: Stack, admin: Admin, subjects: dict[str, str]
) -> None:
    async def listen() -> list[dict[str, Any]]:
        conn = await connect(stack.settings)
        heard: asyncio.Queue[str] = asyncio.Queue()
        await conn.add_listener(channels.LIMITS, lambda *args: heard.put_nowait(args[3]))
        try:
            body = {"scope": "tenant", "subject": subjects["tenant"], "requests_per_minute": 5}
            row = ok(await asyncio.to_thread(admin, "PUT", "/admin/limits", body))
            set_note = json.loads(await asyncio.wait_for(heard.get(), timeout=5))
            await asyncio.to_thread(admin, "DELETE", f"/admin/limits/{row['id']}")
            delete_note = json.loads(await asyncio.wait_for(heard.get(), timeout=5))
            return [row, set_note, delete_note]
        finally:
            await conn.close()

    row, set_note, delete_note = asyncio.run(listen())
    common = {"id": row["id"], "scope": "tenant", "subject": subjects["tenant"], "layer": "tenant"}
    assert set_note == {"op": "set", **common}
    assert delete_note == {"op": "delete", **common}


def test_the_global_limit(stack: Stack, admin: Admin) -> None:
    if ok(admin("GET", "/admin/limits?scope=global"))["data"]:
        pytest.skip("a global limit is configured; not touching it")
    # generous: it applies to every request of the shared stack until it is deleted
    body = {"scope": "global", "requests_per_second": 1_000_000, "requests_per_minute": 10**9}
    row: dict[str, Any] | None = None
    try:
        row = ok(admin("PUT", "/admin/limits", body))
        assert (row["scope"], row["subject"], row["layer"]) == ("global", "", "global")
        audit = ok(admin("GET", "/admin/audit?entity_id=global::global&limit=1"))["data"]
        assert audit[0]["action"] == "rate_limit.create"
    finally:
        if row is not None:
            ok(admin("DELETE", f"/admin/limits/{row['id']}"))
        run_db(stack, "DELETE FROM rate_limits WHERE scope = 'global'")
    assert ok(admin("GET", "/admin/limits?scope=global"))["data"] == []


@pytest.mark.parametrize(
    ("scope", "subject"),
    [
        ("tenant", "{uuid}"),
        ("tenant", "not-a-uuid"),
        ("tenant", "{env}"),  # an environment is not a tenant
        ("environment", "{uuid}"),
        ("environment", "{tenant}"),
        ("key", "{uuid}"),
        ("key", "nokey1234"),
        ("key", "{tenant}"),
    ],
)
def test_unknown_subjects_are_not_found(
    stack: Stack, admin: Admin, subjects: dict[str, str], scope: str, subject: str
) -> None:
    subject = subject.format(uuid=uuid.uuid4(), **subjects)
    before = last_audit_id(stack)
    body = {"scope": scope, "subject": subject, "requests_per_minute": 1}
    error = refused(admin("PUT", "/admin/limits", body), 404)
    assert (error["code"], error["param"]) == ("subject_not_found", "subject")
    assert error["message"] == f"No {scope} '{subject}'."
    assert last_audit_id(stack) == before
    assert run_db(stack, "SELECT count(*) FROM rate_limits WHERE subject = $1", subject)[0][0] == 0


TENANT = {"scope": "tenant", "subject": "{tenant}"}


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({**TENANT, "requests_per_minute": 1, "burst": 2}, "burst", "Unknown field(s): burst."),
        ({**TENANT, "requests_per_minute": -5}, "requests_per_minute", "must be a positive"),
        ({**TENANT, "requests_per_minute": 0}, "requests_per_minute", "must be a positive"),
        ({**TENANT, "tokens_per_day": "many"}, "tokens_per_day", "must be a positive"),
        ({**TENANT, "tokens_per_day": 1.5}, "tokens_per_day", "must be a positive"),
        (
            {**TENANT, "requests_per_second": 10, "requests_per_minute": 5},
            "requests_per_second",
            "the minute window always binds first",
        ),
        (
            {**TENANT, "tokens_per_minute": 10, "tokens_per_day": 5},
            "tokens_per_minute",
            "'tokens_per_minute' above 'tokens_per_day' can never apply.",
        ),
        (TENANT, None, "Set at least one of requests_per_second"),
        ({**TENANT, "requests_per_minute": None}, None, "Set at least one of"),
        ({**TENANT, "layer": "key", "tokens_per_day": 1}, "layer", "A tenant limit limits"),
        (
            {"scope": "plan", "subject": "pro", "layer": "global", "tokens_per_day": 1},
            "layer",
            "The global layer is set with scope 'global'.",
        ),
        ({"scope": "plan", "subject": "pro", "tokens_per_day": 1}, "layer", "'layer' must be"),
        ({"scope": "global", "subject": "x", "tokens_per_day": 1}, "subject", "'subject' names"),
        ({"scope": "tenant", "tokens_per_day": 1}, "subject", "'subject' names"),
        ({**TENANT, "tokens_per_day": 1, "fail_mode": "maybe"}, "fail_mode", "'fail_mode' must"),
        ({"scope": "region", "subject": "eu", "tokens_per_day": 1}, "scope", "'scope' must be"),
        (["scope", "tenant"], None, "The body must be a JSON object."),
    ],
)
def test_invalid_limits_are_refused(
    stack: Stack,
    admin: Admin,
    subjects: dict[str, str],
    body: Any,
    param: str | None,
    message: str,
) -> None:
    if isinstance(body, dict):
        body = {k: v.format(**subjects) if isinstance(v, str) else v for k, v in body.items()}
    before = last_audit_id(stack)
    error = refused(admin("PUT", "/admin/limits", body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and message in error["message"], error
    assert last_audit_id(stack) == before


def test_bad_filters_ids_and_tokens(stack: Stack, admin: Admin) -> None:
    error = refused(admin("GET", "/admin/limits?scope=region"), 400)
    assert error["param"] == "scope"
    for bad in ("abc", "0", "-1", "99999999999999999999"):
        error = refused(admin("DELETE", f"/admin/limits/{bad}"), 404)
        assert error["message"] == f"No rate_limit '{bad}'."
    stranger = Admin(stack)
    stranger.headers["Authorization"] = "Bearer clk_not_the_operator"
    for method, path, body in (
        ("GET", "/admin/limits", None),
        ("PUT", "/admin/limits", {"scope": "global", "requests_per_second": 1}),
        ("DELETE", "/admin/limits/1", None),
    ):
        assert refused(stranger(method, path, body), 401)["code"] == "invalid_admin_token"


# -- the command line --------------------------------------------------------------------


def test_limits_through_the_cli(cli: Cli, stack: Stack, subjects: dict[str, str]) -> None:
    key_id, api_key_id = subjects["key_id"], subjects["api_key_id"]
    row = cli_ok(
        cli(
            "limits",
            "set",
            *("--scope", "key", "--subject", key_id, "--rps", "2", "--rpm", "60"),
            *("--fail-mode", "closed", "--actor", "bob"),
        )
    )
    assert (row["subject"], row["requests_per_second"], row["requests_per_minute"]) == (
        api_key_id,
        2,
        60,
    )
    assert row["fail_mode"] == "closed"
    assert cli_ok(cli("limits", "list", "--scope", "key", "--subject", key_id)) == [row]
    replaced = cli_ok(
        cli(
            "limits", "set", "--scope", "key", "--subject", api_key_id, "--tpm", "10", "--tpd", "99"
        )
    )
    assert replaced["id"] == row["id"]
    assert (replaced["requests_per_minute"], replaced["tokens_per_day"]) == (None, 99)
    plan = cli_ok(
        cli(
            "limits",
            "set",
            *("--scope", "plan", "--subject", subjects["plan"], "--layer", "environment"),
            *("--tpd", "1000"),
        )
    )
    assert plan["layer"] == "environment"
    listed = cli_ok(cli("limits", "list", "--subject", subjects["plan"]))
    assert [r["id"] for r in listed] == [plan["id"]]

    assert cli_ok(cli("limits", "delete", str(row["id"]))) == replaced
    assert cli_ok(cli("limits", "delete", str(plan["id"])))["id"] == plan["id"]
    assert cli_ok(cli("limits", "list", "--subject", key_id)) == []
    actors = run_db(
        stack,
        "SELECT action, actor FROM audit_log WHERE entity_type = 'rate_limit' "
        "AND entity_id = $1 ORDER BY id",
        f"key:{api_key_id}:key",
    )
    user = f"cli:{getpass.getuser()}"
    assert [(r["action"], r["actor"]) for r in actors] == [
        ("rate_limit.create", "cli:bob"),
        ("rate_limit.update", user),
        ("rate_limit.delete", user),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--rpm", "lots"),
            "'requests_per_minute' must be a positive integer or null.",
        ),
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--rpm", "-5"),
            "'requests_per_minute' must be a positive integer or null.",
        ),
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--rps", "10", "--rpm", "5"),
            "the minute window always binds first",
        ),
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--tpm", "10", "--tpd", "5"),
            "'tokens_per_minute' above 'tokens_per_day' can never apply.",
        ),
        (("set", "--scope", "tenant", "--subject", "{tenant}"), "Set at least one of"),
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--layer", "key", "--rpm", "1"),
            "A tenant limit limits the tenant layer.",
        ),
        (
            ("set", "--scope", "env", "--subject", "{env}", "--rpm", "1"),
            "'scope' must be one of global, plan, tenant, environment, key.",
        ),
        (
            ("set", "--scope", "tenant", "--subject", "{tenant}", "--rpm", "1", "--fail-mode", "x"),
            "'fail_mode' must be 'open' or 'closed'.",
        ),
        (
            ("set", "--scope", "environment", "--subject", "{unknown}", "--rpm", "1"),
            "No environment '{unknown}'.",
        ),
        (("set", "--scope", "key", "--subject", "nokey1234", "--rpm", "1"), "No key 'nokey1234'."),
        (("list", "--scope", "region"), "'scope' must be one of"),
        (("delete", "abc"), "No rate_limit 'abc'."),
        (("delete", "999999999999"), "No rate_limit '999999999999'."),
    ],
)
def test_bad_cli_input_is_refused_with_the_api_message(
    cli: Cli, stack: Stack, subjects: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    ids = {**subjects, "unknown": str(uuid.uuid4())}
    before = last_audit_id(stack)
    code, out, err = cli("limits", *(arg.format(**ids) for arg in argv))
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and message.format(**ids) in err, err
    assert last_audit_id(stack) == before


def test_a_refused_change_leaves_nothing_behind(stack: Stack, subjects: dict[str, str]) -> None:
    """In the caller's transaction: the audit row and NOTIFY go with a rollback too."""

    async def go() -> None:
        conn = await connect(stack.settings)
        try:
            tx = conn.transaction()
            await tx.start()
            row = LimitRow(
                scope="tenant", subject=subjects["tenant"], layer="tenant", requests_per_minute=3
            )
            result = await limits.set_limit(conn, actor="test", row=row)
            assert isinstance(result, dict)
            await tx.rollback()
            assert await limits.list_limits(conn, subject=subjects["tenant"]) == []
            audited = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE entity_id = $1",
                f"tenant:{subjects['tenant']}:tenant",
            )
            assert audited == 0
        finally:
            await conn.close()

    asyncio.run(go())


def test_request_limits_as_large_as_the_api_allows(admin: Admin) -> None:
    plan = f"big-{uuid.uuid4().hex[:8]}"
    status, row = admin(
        "PUT",
        "/admin/limits",
        {"scope": "plan", "subject": plan, "layer": "key", "requests_per_minute": 3_000_000_000},
    )
    assert status == 200, row
    assert admin("DELETE", f"/admin/limits/{row['id']}")[0] == 200
