"""Reads that may use a replica do, and the request path never does: a system whose
``DB_READ_HOST`` is a real streaming standby of its primary, with the standby's replay
paused so that it visibly lags."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import pytest

from crosslogic.billing import aggregation
from crosslogic.billing.hours import HOUR
from crosslogic.cli import main
from crosslogic.db.budget import PRIMARY, REPLICA, budget
from crosslogic.db.connection import read_settings
from crosslogic.embedded import DB_NAME
from crosslogic.settings import to_env
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.db import connect_and
from tests.support.inference import ask, refused
from tests.support.pg_activity import busy_admin, sample_connections
from tests.support.standby import Replicated, replicated_postgres, short_base
from tests.support.system import own_system
from tests.support.usage import add_usage, payer, unused_hour
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[Stack, Replicated]]:
    base = short_base()
    try:
        with (
            replicated_postgres(base) as servers,
            own_system(
                nodes=1,
                db_host=str(servers.primary),
                db_port=5432,
                db_user="postgres",
                db_password="",
                db_name=DB_NAME,
                db_read_host=str(servers.standby),
                db_read_port=5432,
                ratelimit_at="authz",  # the other shape than test_db_connections' system
            ) as stack,
        ):
            yield stack, servers
    finally:
        shutil.rmtree(base, ignore_errors=True)


def zulu(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def admin_report(admin: Admin, tenant_id: str, span: str) -> int:
    return int(ok(admin("GET", f"/admin/usage/{tenant_id}?{span}"))["total"]["requests"])


def own_report(stack: Stack, key: str, span: str) -> int:
    """``/v1/usage`` through Envoy with the tenant's own key."""
    request = urllib.request.Request(
        f"{stack.base_url}/usage?{span}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(json.load(reply)["total"]["requests"])


def cli_report(
    stack: Stack, tenant_id: str, hour: datetime, monkeypatch: pytest.MonkeyPatch
) -> int:
    """``crosslogic billing report`` with the system's environment (DB_READ_HOST included)."""
    for name, value in to_env(stack.settings).items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        span = ["--start", zulu(hour), "--end", zulu(hour + HOUR)]
        code = main(["billing", "report", "--tenant", tenant_id, *span])
    assert code == 0, out.getvalue()
    return int(json.loads(out.getvalue())["total"]["requests"])


def audited(admin: Admin, entity_id: str) -> list[str]:
    return [e["action"] for e in ok(admin("GET", f"/admin/audit?entity_id={entity_id}"))["data"]]


def test_reports_and_the_audit_log_are_read_from_the_replica(
    replicated: tuple[Stack, Replicated], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, servers = replicated
    admin = Admin(stack)
    who, hour = payer(stack), unused_hour()
    span = f"start={zulu(hour)}&end={zulu(hour + HOUR)}"
    wait_until("the standby to have the new tenant", servers.caught_up, timeout=10)
    servers.pause_replay()
    try:
        add_usage(stack, who, hour, count=3, cost=Decimal("0.5"))
        connect_and(stack, lambda conn: aggregation.aggregate_hours(conn, [hour]))
        env = ok(admin("POST", f"/admin/tenants/{who.tenant_id}/environments", {"name": "b"}))
        # committed on the primary, not applied on the replica yet: no report sees them
        assert admin_report(admin, who.tenant_id, span) == 0
        assert own_report(stack, who.key, span) == 0
        assert cli_report(stack, who.tenant_id, hour, monkeypatch) == 0
        assert audited(admin, env["id"]) == []
    finally:
        servers.resume_replay()
    wait_until("the replica to apply the usage", servers.caught_up, timeout=10)
    assert admin_report(admin, who.tenant_id, span) == 3
    assert own_report(stack, who.key, span) == 3
    assert cli_report(stack, who.tenant_id, hour, monkeypatch) == 3
    assert audited(admin, env["id"]) == ["environment.create"]


def test_a_key_revoked_on_the_primary_is_refused_at_once_while_the_replica_lags(
    replicated: tuple[Stack, Replicated],
) -> None:
    stack, servers = replicated
    assert stack.demo is not None
    admin = Admin(stack)
    servers.pause_replay()
    try:
        # made while the replica lags: ext_authz can only know it from the primary
        key = ok(admin("POST", f"/admin/environments/{stack.demo.environment_id}/keys", {}))
        assert ask(stack, key["key"]) is not None
        ok(admin("POST", f"/admin/keys/{key['key_id']}/revoke"))
        assert refused(stack, key["key"]) is not None  # at once: no waiting
    finally:
        servers.resume_replay()


def test_both_servers_stay_within_the_budget(replicated: tuple[Stack, Replicated]) -> None:
    stack, _ = replicated
    limits = budget(stack.settings).limits()
    with busy_admin(Admin(stack)):  # the audit listing: the read pool grows to its size
        on_replica = sample_connections(
            read_settings(stack.settings),
            seconds=1.5,
            until=lambda seen: seen.get("crosslogic-admin-read") == stack.settings.admin_db_pool,
        )
        on_primary = sample_connections(stack.settings, seconds=1.5)
    assert on_replica == {"crosslogic-admin-read": stack.settings.admin_db_pool}
    assert "crosslogic-admin-read" not in on_primary
    for name, count in on_primary.items():
        assert count <= limits.get((PRIMARY, name), 0), (name, count, limits)
    assert limits[(REPLICA, "crosslogic-admin-read")] == stack.settings.admin_db_pool
    assert on_primary["crosslogic-extauthz-limits-listen"] >= 1  # RATELIMIT_AT=authz's
