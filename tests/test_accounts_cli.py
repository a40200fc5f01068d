"""The operator command line (against the real PostgreSQL) and the admin API's OpenAPI document.

The CLI runs in-process through ``crosslogic.cli.main`` with the stack's DB settings in the
environment, exactly as an operator's shell would. The document is checked against the app's
router and against the request parsers, so neither can drift from the code.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jsonschema
import openai
import pytest
from aiohttp import web

from crosslogic.accounts import requests as parse
from crosslogic.accounts.cli import duration_seconds
from crosslogic.admin import openapi
from crosslogic.admin.app import make_app
from crosslogic.admin.registration import parse_heartbeat, parse_registration
from crosslogic.cli import main
from crosslogic.errors import Invalid
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import parse_limit
from crosslogic.settings import Settings
from crosslogic.stack import Stack
from tests.conftest import Cli, cli_ok, run_db


@pytest.fixture(scope="module")
def tenancy(stack: Stack) -> Iterator[dict[str, str]]:
    """A tenant and an environment made behind the CLI's back, for the refusal tests."""
    tenant = run_db(
        stack,
        "INSERT INTO tenants (name) VALUES ($1) RETURNING id::text",
        f"cli-refusals-{uuid.uuid4().hex[:8]}",
    )[0][0]
    env = run_db(
        stack,
        "INSERT INTO environments (tenant_id, name) VALUES ($1, 'prod') RETURNING id::text",
        tenant,
    )[0][0]
    yield {"tenant": tenant, "env": env}


def test_operator_lifecycle_is_audited_as_cli(cli: Cli, stack: Stack) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    tenant = cli_ok(cli("tenants", "create", name, "--plan", "pro"))
    assert (tenant["name"], tenant["plan"], tenant["status"]) == (name, "pro", "active")
    assert name in [t["name"] for t in cli_ok(cli("tenants", "list"))]
    env = cli_ok(cli("envs", "create", tenant["id"], "prod"))
    assert env["tenant_id"] == tenant["id"] and env["status"] == "active"
    assert cli_ok(cli("envs", "list", tenant["id"])) == [env]

    key = cli_ok(
        cli(
            "keys",
            "create",
            env["id"],
            *("--name", "ci", "--models", "demo-llama", "--rpm", "60", "--actor", "alice"),
        )
    )
    assert key["key"].startswith(f"clk_{key['key_id']}_")
    assert (key["name"], key["allowed_models"], key["rate_limit_rpm"]) == ("ci", ["demo-llama"], 60)
    listed = cli_ok(cli("keys", "list", "--env", env["id"]))
    assert [k["key_id"] for k in listed] == [key["key_id"]] and "key" not in listed[0]
    # the key is real: Envoy's ext_authz accepts it
    client = openai.OpenAI(base_url=stack.base_url, api_key=key["key"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["demo-llama"]

    code, out, err = cli("keys", "rotate", key["key_id"], "--grace", "5m", "--quiet")
    assert code == 0, err
    assert re.fullmatch(r"clk_\w+\n", out) and out.strip() != key["key"]
    old = cli_ok(cli("keys", "show", key["key_id"]))
    left = (datetime.fromisoformat(old["grace_ends_at"]) - datetime.now(UTC)).total_seconds()
    assert 240 < left <= 300 and old["expires_at"] is None  # its own expiry is kept
    code, out, err = cli("keys", "rotate", key["key_id"])  # a key is rotated once
    assert (code, out) == (1, "") and "was already rotated to" in err, err
    assert cli_ok(cli("keys", "revoke", key["key_id"]))["status"] == "revoked"
    code, out, err = cli("keys", "create", env["id"], "--quiet")
    assert code == 0 and re.fullmatch(r"clk_\w+\n", out), err

    assert cli_ok(cli("envs", "disable", env["id"]))["status"] == "disabled"
    assert cli_ok(cli("envs", "enable", env["id"]))["status"] == "active"
    assert cli_ok(cli("tenants", "suspend", tenant["id"]))["status"] == "suspended"
    assert cli_ok(cli("tenants", "activate", tenant["id"]))["status"] == "active"
    assert cli_ok(cli("tenants", "show", tenant["id"]))["status"] == "active"

    entries = cli_ok(cli("audit", "--entity", tenant["id"]))
    assert [e["action"] for e in entries] == ["tenant.active", "tenant.suspended", "tenant.create"]
    assert entries[1]["before"]["status"] == "active"
    assert entries[1]["after"]["status"] == "suspended"
    rows = run_db(
        stack,
        "SELECT DISTINCT actor FROM audit_log WHERE entity_id = ANY($1::text[])",
        [tenant["id"], env["id"], key["key_id"]],
    )
    assert {r["actor"] for r in rows} == {f"cli:{getpass.getuser()}", "cli:alice"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("keys", "create", "{env}", "--rpm", "-5"),
            "'rate_limit_rpm' must be an integer in [1, 1e9], or null.",
        ),
        (
            ("keys", "create", "{env}", "--rpm", "lots"),
            "'rate_limit_rpm' must be an integer in [1, 1e9], or null.",
        ),
        (("keys", "create", "{env}", "--expires-at", "soon"), "'expires_at' must be an ISO 8601"),
        (("keys", "create", "{env}", "--expires-at", "2001-01-01T00:00Z"), "must be in the future"),
        (("keys", "create", "{env}", "--models", "a,,b"), "'allowed_models' must be a non-empty"),
        (("keys", "create", "{unknown}"), "No environment '{unknown}'."),
        (("keys", "rotate", "somekey", "--grace", "31d"), "'grace_seconds' must be an integer"),
        (("keys", "rotate", "somekey", "--grace", "soon"), "'--grace' must be a duration"),
        (("keys", "rotate", "nokey"), "No api_key 'nokey'."),
        (("keys", "revoke", "nokey"), "No api_key 'nokey'."),
        (("envs", "create", "{tenant}", "Prod!"), "'name' must match"),
        (("envs", "create", "{unknown}", "prod"), "No tenant '{unknown}'."),
        (("envs", "list", "not-a-uuid"), "No tenant 'not-a-uuid'."),
        (("envs", "disable", "{unknown}"), "No environment '{unknown}'."),
        (("tenants", "create", ""), "'name' must be a non-empty string"),
        (("tenants", "suspend", "not-a-uuid"), "No tenant 'not-a-uuid'."),
        (("audit", "--limit", "many"), "'limit' must be an integer."),
    ],
)
def test_bad_input_is_refused_with_the_api_message(
    cli: Cli, stack: Stack, tenancy: dict[str, str], argv: tuple[str, ...], message: str
) -> None:
    ids = {**tenancy, "unknown": str(uuid.uuid4())}
    last_audit = run_db(stack, "SELECT max(id) FROM audit_log")[0][0]
    code, out, err = cli(*(arg.format(**ids) for arg in argv))
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and message.format(**ids) in err, err
    assert run_db(stack, "SELECT max(id) FROM audit_log")[0][0] == last_audit


def test_a_refused_change_is_rolled_back(cli: Cli, stack: Stack) -> None:
    name = f"cli-dup-{uuid.uuid4().hex[:8]}"
    cli_ok(cli("tenants", "create", name))
    code, _, err = cli("tenants", "create", name)
    assert code == 1 and err == f"error: A tenant named '{name}' exists.\n"
    created = run_db(
        stack,
        "SELECT count(*) FROM audit_log WHERE action = 'tenant.create' AND after->>'name' = $1",
        name,
    )
    assert created[0][0] == 1


def test_without_db_host_the_commands_say_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DB_HOST", "")
    assert main(["tenants", "list"]) == 2
    assert "needs DB_HOST" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("90", 90), ("0", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "1.5h", "1w", "h", "5 m m"])
def test_bad_durations(text: str) -> None:
    assert duration_seconds(text) is None


# -- the OpenAPI document ----------------------------------------------------------------

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s until a node that is not a reference."""
    while isinstance(node, dict) and "$ref" in node:
        pointer = str(node["$ref"])
        assert pointer.startswith("#/"), pointer
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part]
    return node


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


def test_openapi_document_is_well_formed(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    # YAML traps: an unquoted `null` in a type list, a colon in a flow-style description
    assert all(node is not None for node in walk(doc))
    for node in walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            resolve(doc, node)  # a dangling reference raises KeyError
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    for path, _, operation in operations(doc):
        assert operation["responses"], path
        declared = {
            resolve(doc, p)["name"]
            for p in doc["paths"][path].get("parameters", []) + operation.get("parameters", [])
            if resolve(doc, p)["in"] == "path"
        }
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path
        if "requestBody" in operation:
            schema = resolve(doc, operation["requestBody"]["content"]["application/json"]["schema"])
            assert schema["additionalProperties"] is False, path
        if path.startswith("/admin/") and path != openapi.PATH:
            assert operation.get("security", doc["security"]) == [{"operatorToken": []}], path
            assert "401" in operation["responses"], path


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_route_of_the_admin_app_is_documented(doc: dict[str, Any]) -> None:
    app = make_app(Settings())
    if ("get", openapi.PATH) not in served_routes(app):
        openapi.add_route(app)  # until make_app registers it itself
    served = served_routes(app)
    documented = {(method, path) for path, method, _ in operations(doc)}
    assert served - documented == set(), "routes missing from openapi.yaml"
    assert documented - served == set(), "openapi.yaml documents routes that do not exist"


NOW = datetime.now(UTC)
PARSERS: dict[str, Callable[[Any], object]] = {
    "TenantCreate": parse.tenant_name,
    "TenantStatusChange": lambda body: parse.status_change(body, ("active", "suspended")),
    "EnvironmentCreate": parse.environment_name,
    "EnvironmentStatusChange": lambda body: parse.status_change(body, ("active", "disabled")),
    "KeyCreate": lambda body: parse.key_spec(body, now=NOW),
    "KeyRotate": parse.grace_seconds,
    "NodeRegistration": parse_registration,
    "NodeHeartbeat": parse_heartbeat,
    "LimitSet": parse_limit,
}
NODE = {"model": "m", "address": "10.0.0.1", "port": 8000}
TENANT_RPM = {"scope": "tenant", "subject": "t1", "requests_per_minute": 60}


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("TenantCreate", {"name": "acme"}),
        ("TenantCreate", {"name": "acme", "plan": ""}),
        ("TenantCreate", {"name": "a" * 200, "plan": "pro"}),
        ("TenantCreate", {"name": "a" * 201}),
        ("TenantCreate", {"name": ""}),
        ("TenantCreate", {"name": 5}),
        ("TenantCreate", {"name": "acme", "plan": None}),
        ("TenantCreate", {"name": "acme", "colour": "red"}),
        ("TenantCreate", {}),
        ("TenantStatusChange", {"status": "suspended"}),
        ("TenantStatusChange", {"status": "disabled"}),
        ("TenantStatusChange", {"status": "active", "reason": "x"}),
        ("EnvironmentStatusChange", {"status": "disabled"}),
        ("EnvironmentStatusChange", {}),
        ("EnvironmentCreate", {"name": "prod"}),
        ("EnvironmentCreate", {"name": "my_env-2"}),
        ("EnvironmentCreate", {"name": "a" * 63}),
        ("EnvironmentCreate", {"name": "a" * 64}),
        ("EnvironmentCreate", {"name": "Prod"}),
        ("EnvironmentCreate", {"name": "-prod"}),
        ("EnvironmentCreate", {"name": "prod", "plan": "x"}),
        ("KeyCreate", {}),
        ("KeyCreate", {"name": "ci", "expires_at": None, "allowed_models": None}),
        ("KeyCreate", {"name": None}),
        ("KeyCreate", {"name": "n" * 201}),
        ("KeyCreate", {"expires_at": "2999-01-01T00:00:00Z"}),
        ("KeyCreate", {"allowed_models": ["a", "a"], "allowed_regions": ["eu"]}),
        ("KeyCreate", {"allowed_models": []}),
        ("KeyCreate", {"allowed_models": [""]}),
        ("KeyCreate", {"allowed_regions": ["r" * 201]}),
        ("KeyCreate", {"allowed_regions": "eu"}),
        ("KeyCreate", {"rate_limit_rpm": 1}),
        ("KeyCreate", {"rate_limit_rpm": 10**9}),
        ("KeyCreate", {"rate_limit_rpm": 10**9 + 1}),
        ("KeyCreate", {"rate_limit_rpm": 0}),
        ("KeyCreate", {"rate_limit_rpm": "60"}),
        ("KeyCreate", {"rate_limit_rpm": True}),
        ("KeyCreate", {"key": "clk_x"}),
        ("KeyRotate", {}),
        ("KeyRotate", {"grace_seconds": 0}),
        ("KeyRotate", {"grace_seconds": 30 * 86400}),
        ("KeyRotate", {"grace_seconds": 30 * 86400 + 1}),
        ("KeyRotate", {"grace_seconds": -1}),
        ("KeyRotate", {"grace_seconds": "60"}),
        ("KeyRotate", {"grace": 60}),
        ("NodeRegistration", NODE),
        ("NodeRegistration", {**NODE, "node_id": "gpu-1.a_b", "gpu_type": "", "region": "eu"}),
        ("NodeRegistration", {**NODE, "node_id": None}),
        ("NodeRegistration", {**NODE, "node_id": ""}),
        ("NodeRegistration", {**NODE, "node_id": "gpu 1"}),
        ("NodeRegistration", {**NODE, "port": 0}),
        ("NodeRegistration", {**NODE, "port": 65536}),
        ("NodeRegistration", {**NODE, "port": "8000"}),
        ("NodeRegistration", {**NODE, "provider": ""}),
        ("NodeRegistration", {**NODE, "gpu_type": None}),
        ("NodeRegistration", {"model": "m", "port": 8000}),
        ("NodeRegistration", {**NODE, "colour": "red"}),
        ("NodeHeartbeat", {}),
        ("NodeHeartbeat", {"requests_running": 3, "kv_cache_usage_perc": 1, "status": "ok"}),
        ("NodeHeartbeat", {"kv_cache_usage_perc": 1.5}),
        ("NodeHeartbeat", {"requests_waiting": -1}),
        ("NodeHeartbeat", {"requests_running": 1.5}),
        ("NodeHeartbeat", {"load": 1}),
        ("LimitSet", TENANT_RPM),
        ("LimitSet", {**TENANT_RPM, "layer": "tenant", "fail_mode": "closed"}),
        ("LimitSet", {"scope": "global", "requests_per_second": 100}),
        ("LimitSet", {"scope": "global", "subject": "", "layer": "global", "tokens_per_day": 1}),
        ("LimitSet", {"scope": "global", "subject": "x", "requests_per_second": 1}),
        ("LimitSet", {"scope": "global", "layer": "tenant", "requests_per_second": 1}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "layer": "key", "tokens_per_minute": 9}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "tokens_per_minute": 9}),
        ("LimitSet", {"scope": "plan", "subject": "pro", "layer": "global", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "plan", "layer": "tenant", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "plan", "subject": "", "layer": "tenant", "tokens_per_day": 9}),
        ("LimitSet", {"scope": "key", "subject": "k", "requests_per_second": 10**12}),
        ("LimitSet", {"scope": "key", "subject": "k", "requests_per_second": 10**12 + 1}),
        ("LimitSet", {"scope": "key", "subject": "s" * 200, "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "subject": "s" * 201, "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "requests_per_second": 1}),
        ("LimitSet", {"scope": "key", "subject": None, "requests_per_second": 1}),
        ("LimitSet", {"scope": "environment", "subject": "e", "layer": "key", "tokens_per_day": 1}),
        ("LimitSet", {"scope": "environment", "subject": "e", "tokens_per_day": 1, "rpm": 1}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": 0}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": -5}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": "60"}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": True}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": None}),
        ("LimitSet", {**TENANT_RPM, "requests_per_minute": None, "tokens_per_day": 5}),
        ("LimitSet", {**TENANT_RPM, "requests_per_second": None}),
        ("LimitSet", {**TENANT_RPM, "fail_mode": "sometimes"}),
        ("LimitSet", {**TENANT_RPM, "fail_mode": None}),
        ("LimitSet", {**TENANT_RPM, "scope": "region"}),
        ("LimitSet", {"subject": "t1", "requests_per_minute": 60}),
    ],
)
def test_request_schemas_agree_with_the_parsers(
    doc: dict[str, Any], schema: str, body: dict[str, Any]
) -> None:
    validator = jsonschema.Draft202012Validator(
        {"components": doc["components"], "$ref": f"#/components/schemas/{schema}"}
    )
    try:
        accepted = not isinstance(PARSERS[schema](body), ApiError)
    except Invalid:
        accepted = False
    assert validator.is_valid(body) == accepted


def test_document_is_served_as_json(doc: dict[str, Any]) -> None:
    async def fetch() -> tuple[int, Any]:
        app = web.Application()
        openapi.add_route(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}{openapi.PATH}") as response,
            ):
                return response.status, await response.json()
        finally:
            await runner.cleanup()

    assert asyncio.run(fetch()) == (200, doc)
