"""The operator command line, against the real PostgreSQL.

The CLI runs in-process through ``crosslogic.cli.main`` with the stack's DB settings in the
environment, exactly as an operator's shell would.
"""

from __future__ import annotations

import getpass
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import openai
import pytest

from crosslogic.accounts.cli import duration_seconds
from crosslogic.cli import main
from crosslogic.stack import Stack
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db


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
