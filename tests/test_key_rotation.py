"""Key rotation rules, through the admin API and through Envoy with the openai SDK.

A key is rotated once; its successor inherits its own expiry (never a grace end) and is the
one rotated next. Revoking ends a grace period at once and touches no other key.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest

from crosslogic.accounts import rotation
from crosslogic.accounts.requests import MAX_GRACE_S
from crosslogic.db.connection import connect
from crosslogic.errors import Conflict
from crosslogic.stack import Stack
from tests.support.admin import Admin, new_key, ok
from tests.support.db import run_db
from tests.support.inference import ask, wait_refused
from tests.support.protocols import over_both_protocols
from tests.support.system import MODEL
from tests.support.waiting import wait_until

stack = over_both_protocols()  # every test here runs over gRPC, then HTTP

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def rotate(admin: Admin, key: dict[str, Any], grace: int | None = 60) -> tuple[int, Any]:
    return admin("POST", f"/admin/keys/{key['key_id']}/rotate", {"grace_seconds": grace})


def show(admin: Admin, key: dict[str, Any]) -> dict[str, Any]:
    return dict(ok(admin("GET", f"/admin/keys/{key['key_id']}")))


def when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- the pure rules ------------------------------------------------------------------------


def row(**changes: Any) -> dict[str, Any]:
    base = {"key_id": "k1", "status": "active", "rotated_at": None, "grace_ends_at": None}
    return {**base, "expires_at": None, **changes}


def test_rules_refuse_revoked_rotated_and_expired_keys() -> None:
    assert rotation.refusal(row(), successor=None, now=NOW) is None
    later = row(expires_at=NOW + timedelta(seconds=1))
    assert rotation.refusal(later, successor=None, now=NOW) is None
    revoked = rotation.refusal(row(status="revoked"), successor=None, now=NOW)
    assert isinstance(revoked, Conflict) and revoked.code == "api_key_revoked"
    rotated = row(rotated_at=NOW, grace_ends_at=NOW + timedelta(hours=1))
    again = rotation.refusal(rotated, successor="k2", now=NOW)
    assert isinstance(again, Conflict) and again.code == "api_key_already_rotated"
    assert "'k2'" in again.message and "2030-01-01T01:00:00+00:00" in again.message
    expired = rotation.refusal(row(expires_at=NOW), successor=None, now=NOW)
    assert isinstance(expired, Conflict) and expired.code == "api_key_expired"


def test_grace_never_outlives_the_keys_own_expiry() -> None:
    assert rotation.grace_end(expires_at=None, now=NOW, grace_seconds=0) == NOW
    assert rotation.grace_end(expires_at=None, now=NOW, grace_seconds=60) == NOW + timedelta(
        seconds=60
    )
    soon = NOW + timedelta(seconds=10)
    assert rotation.grace_end(expires_at=soon, now=NOW, grace_seconds=60) == soon


# -- through the admin API -----------------------------------------------------------------


def test_rotating_a_key_twice_is_refused_naming_its_successor(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    # the reported bug: the second rotation made a successor that died with the first grace
    original = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    a = new_key(admin, environment, expires_at=original.isoformat())
    b = ok(rotate(admin, a, 60))["new"]
    a_rotated = show(admin, a)
    audit_before = run_db(stack, "SELECT max(id) FROM audit_log")[0][0]

    status, body = rotate(admin, a, 3600)
    assert status == 409, body
    assert body["error"]["code"] == "api_key_already_rotated"
    assert f"'{b['key_id']}'" in body["error"]["message"]
    assert show(admin, a) == a_rotated  # its grace is neither extended nor shortened
    assert when(show(admin, b)["expires_at"]) == original
    assert run_db(stack, "SELECT max(id) FROM audit_log")[0][0] == audit_before
    successors = run_db(
        stack, "SELECT count(*) FROM api_keys WHERE rotated_from = $1", a["api_key_id"]
    )
    assert successors[0][0] == 1


def test_rotating_a_chain_keeps_the_original_expiry_and_settings(
    admin: Admin, environment: dict[str, Any]
) -> None:
    original = (datetime.now(UTC) + timedelta(days=7)).replace(microsecond=0)
    a = new_key(
        admin,
        environment,
        name="ci",
        expires_at=original.isoformat(),
        allowed_models=[MODEL],
        allowed_regions=["local"],
        rate_limit_rpm=600,
    )
    first = ok(rotate(admin, a, 120))
    b = first["new"]
    a_grace = when(first["old"]["grace_ends_at"])
    assert a_grace is not None and a_grace < original
    assert when(first["old"]["expires_at"]) == original  # its own expiry is kept
    assert when(b["expires_at"]) == original and b["grace_ends_at"] is None

    second = ok(rotate(admin, b, 60))
    c = second["new"]
    settings = ("name", "allowed_models", "allowed_regions", "rate_limit_rpm", "expires_at")
    assert {f: c[f] for f in settings} == {f: a[f] for f in settings}
    assert when(c["expires_at"]) == original
    assert c["rotated_from"] == b["api_key_id"] and b["rotated_from"] == a["api_key_id"]
    assert when(second["old"]["rotated_at"]) is not None
    assert when(second["old"]["grace_ends_at"]) is not None
    assert when(show(admin, a)["grace_ends_at"]) == a_grace  # never extended
    assert c["rotated_at"] is None and c["grace_ends_at"] is None


def test_rotation_and_refusals_are_audited(admin: Admin, environment: dict[str, Any]) -> None:
    a = new_key(admin, environment)
    b = ok(rotate(admin, a, 30))["new"]
    entries = ok(admin("GET", f"/admin/audit?entity_id={a['key_id']}"))["data"]
    assert [e["action"] for e in entries] == ["api_key.rotate", "api_key.create"]
    rotated = entries[0]
    assert rotated["actor"] == "operator:alice"
    assert rotated["before"]["grace_ends_at"] is None and rotated["before"]["rotated_at"] is None
    assert rotated["after"]["grace_ends_at"] is not None
    created = ok(admin("GET", f"/admin/audit?entity_id={b['key_id']}"))["data"]
    assert [e["action"] for e in created] == ["api_key.create"]
    assert created[0]["after"]["rotated_from"] == a["api_key_id"]


def test_revoked_and_expired_keys_cannot_be_rotated(
    admin: Admin, environment: dict[str, Any]
) -> None:
    revoked = new_key(admin, environment)
    ok(admin("POST", f"/admin/keys/{revoked['key_id']}/revoke"))
    status, body = rotate(admin, revoked)
    assert (status, body["error"]["code"]) == (409, "api_key_revoked")

    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    expiring = new_key(admin, environment, expires_at=soon.isoformat())
    wait_until("the key's expiry", lambda: datetime.now(UTC) > soon, timeout=5)
    status, body = rotate(admin, expiring)
    assert (status, body["error"]["code"]) == (409, "api_key_expired")
    assert "create a new one" in body["error"]["message"]


@pytest.mark.parametrize("grace", [-1, MAX_GRACE_S + 1, 10**12, "60", True, 1.5, None])
def test_grace_seconds_out_of_bounds_is_refused_naming_the_field(
    admin: Admin, environment: dict[str, Any], grace: Any
) -> None:
    key = new_key(admin, environment)
    status, body = rotate(admin, key, grace)
    assert status == 400, body
    assert body["error"]["param"] == "grace_seconds"
    assert show(admin, key)["rotated_at"] is None


def test_the_longest_grace_is_accepted(admin: Admin, environment: dict[str, Any]) -> None:
    rotated = ok(rotate(admin, new_key(admin, environment), MAX_GRACE_S))["old"]
    start, end = when(rotated["rotated_at"]), when(rotated["grace_ends_at"])
    assert start is not None and end == start + timedelta(seconds=MAX_GRACE_S)


def test_concurrent_rotations_of_one_key_make_one_successor(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    key = new_key(admin, environment)
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(s for s, _ in pool.map(lambda _: rotate(admin, key), range(4)))
    assert statuses == [201, 409, 409, 409]
    count = run_db(
        stack, "SELECT count(*) FROM api_keys WHERE rotated_from = $1", key["api_key_id"]
    )
    assert count[0][0] == 1


# -- through Envoy ---------------------------------------------------------------------------


def test_old_key_works_during_grace_and_the_successor_after_it(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    old = new_key(admin, environment)
    assert ask(stack, old["key"]) == "tok0"  # cached by ext_authz before the rotation
    new = ok(rotate(admin, old, 2))["new"]
    assert ask(stack, new["key"]) == "tok0"
    grace_end = when(show(admin, old)["grace_ends_at"])
    assert grace_end is not None
    if datetime.now(UTC) < grace_end - timedelta(milliseconds=300):
        assert ask(stack, old["key"]) == "tok0"  # in its grace period
    assert "expired" in wait_refused(stack, old["key"])
    assert ask(stack, new["key"]) == "tok0"
    # the successor rotates normally, and its successor works
    newest = ok(rotate(admin, new, 3600))["new"]
    assert ask(stack, newest["key"]) == "tok0" and ask(stack, new["key"]) == "tok0"


def test_zero_grace_ends_the_old_key_at_once(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    old = new_key(admin, environment)
    assert ask(stack, old["key"]) == "tok0"
    new = ok(rotate(admin, old, 0))["new"]
    assert "expired" in wait_refused(stack, old["key"])
    assert ask(stack, new["key"]) == "tok0"


def test_revoking_in_grace_ends_it_now_and_spares_the_successor(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    old = new_key(admin, environment)
    new = ok(rotate(admin, old, 3600))["new"]
    assert ask(stack, old["key"]) == "tok0"  # in its (long) grace period
    in_grace = show(admin, old)
    revoked = ok(admin("POST", f"/admin/keys/{old['key_id']}/revoke"))
    assert revoked["status"] == "revoked" and revoked["grace_ends_at"] == in_grace["grace_ends_at"]
    assert "revoked" in wait_refused(stack, old["key"])
    assert ask(stack, new["key"]) == "tok0"
    assert show(admin, new)["status"] == "active"


def test_revoking_the_successor_does_not_revive_the_old_key(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    old = new_key(admin, environment)
    new = ok(rotate(admin, old, 0))["new"]
    assert "expired" in wait_refused(stack, old["key"])
    before = show(admin, old)
    ok(admin("POST", f"/admin/keys/{new['key_id']}/revoke"))
    assert "revoked" in wait_refused(stack, new["key"])
    assert "expired" in wait_refused(stack, old["key"])
    assert show(admin, old) == before
    status, body = rotate(admin, old)  # still rotated: no second successor either
    assert (status, body["error"]["code"]) == (409, "api_key_already_rotated")


# -- the migration -------------------------------------------------------------------------


def test_migration_restores_the_expiry_of_keys_rotated_before_it(
    stack: Stack, admin: Admin, environment: dict[str, Any]
) -> None:
    # the shape the old code left: the grace end written over the old key's expires_at, the
    # successor holding the expiry the old key had
    original = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    grace_end = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    old = new_key(admin, environment, expires_at=grace_end.isoformat())
    new = new_key(admin, environment, expires_at=original.isoformat())
    run_db(
        stack,
        "UPDATE api_keys SET rotated_from = $1 WHERE key_id = $2",
        old["api_key_id"],
        new["key_id"],
    )
    sql = resources.files("crosslogic.db").joinpath("migrations/0005_rotation_grace.sql")

    async def rerun() -> None:  # the file is idempotent: running it again changes only these
        conn = await connect(stack.settings)
        try:
            await conn.execute(sql.read_text())
        finally:
            await conn.close()

    asyncio.run(rerun())
    migrated = show(admin, old)
    assert when(migrated["expires_at"]) == original
    assert when(migrated["grace_ends_at"]) == grace_end
    assert when(migrated["rotated_at"]) == when(new["created_at"])
    assert (rotate(admin, old)[0], when(show(admin, new)["expires_at"])) == (409, original)
