"""Reserved capacity through the admin API and the operator command line, against the real
stack: sold, listed, shown and cancelled (audited); refused with the house's 400/404/409, and
nothing written when refused; both edges refuse a bad reservation with the same message."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from crosslogic.admin import openapi
from crosslogic.billing.reservations import reservation_spec
from crosslogic.errors import Invalid
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db
from tests.support.tenants import fresh_tenant

# a coming period of whole UTC hours, days ahead so that no test sees it start
_START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)


def hours(offset: int) -> str:
    """``offset`` hours after the test period's start, as the API reads it."""
    return (_START + timedelta(hours=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def a_model(stack: Stack) -> str:
    name = f"res-{time.monotonic_ns()}"
    run_db(stack, "INSERT INTO models (name) VALUES ($1)", name)
    return name


def a_region(stack: Stack) -> str:
    code = f"res-{uuid.uuid4().hex[:12]}"
    run_db(stack, "INSERT INTO regions (code, name, provider) VALUES ($1, 'R', 'test')", code)
    return code


def body(model: str, /, **change: Any) -> dict[str, Any]:
    return {
        "model": model,
        "tokens_per_minute": 1000,
        "starts_at": hours(0),
        "ends_at": hours(24),
        "fee_usd": "1500.00",
        **change,
    }


def written(stack: Stack, tenant: str) -> tuple[int, int]:
    """The tenant's reservations and their audit rows: what a refusal must leave as it was."""
    rows = run_db(stack, "SELECT count(*) FROM reservations WHERE tenant_id = $1", tenant)
    audited = run_db(
        stack,
        "SELECT count(*) FROM audit_log WHERE entity_type = 'reservation' "
        "AND coalesce(after, before)->>'tenant_id' = $1",
        tenant,
    )
    return rows[0][0], audited[0][0]


def audit_of(stack: Stack, reservation_id: int) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in run_db(
            stack,
            "SELECT action, actor, before IS NULL AS no_before, after IS NULL AS no_after "
            "FROM audit_log WHERE entity_type = 'reservation' AND entity_id = $1 ORDER BY id",
            str(reservation_id),
        )
    ]


def test_a_reservation_is_sold_listed_shown_and_cancelled_through_the_api(
    stack: Stack, admin: Admin
) -> None:
    tenant, _ = fresh_tenant(stack)
    model, region = a_model(stack), a_region(stack)
    status, row = admin(
        "POST", f"/admin/tenants/{tenant}/reservations", body(model, region=region, note="Q4")
    )
    assert status == 201, row
    assert {k: row[k] for k in ("tenant_id", "model", "region", "tokens_per_minute")} == {
        "tenant_id": tenant,
        "model": model,
        "region": region,
        "tokens_per_minute": 1000,
    }
    assert datetime.fromisoformat(row["starts_at"]) == _START
    assert datetime.fromisoformat(row["ends_at"]) == _START + timedelta(days=1)
    assert (row["fee_usd"], row["note"], row["actor"]) == ("1500.00", "Q4", "operator:alice")
    assert (row["used_tokens"], row["covered_tokens"], row["overage_tokens"]) == (0, 0, 0)
    assert row["overage_cost_usd"] == "0"

    assert ok(admin("GET", f"/admin/tenants/{tenant}/reservations")) == {"data": [row]}
    assert ok(admin("GET", f"/admin/reservations/{row['id']}")) == row

    assert ok(admin("DELETE", f"/admin/reservations/{row['id']}")) == row
    status, error = admin("GET", f"/admin/reservations/{row['id']}")
    assert status == 404 and error["error"]["code"] == "reservation_not_found"
    assert ok(admin("GET", f"/admin/tenants/{tenant}/reservations")) == {"data": []}
    assert audit_of(stack, row["id"]) == [
        {
            "action": "reservation.create",
            "actor": "operator:alice",
            "no_before": True,
            "no_after": False,
        },
        {
            "action": "reservation.cancel",
            "actor": "operator:alice",
            "no_before": False,
            "no_after": True,
        },
    ]


def test_any_region_is_null(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    row = ok(admin("POST", f"/admin/tenants/{tenant}/reservations", body(a_model(stack))))
    assert row["region"] is None and row["note"] == ""


def test_a_reservation_is_sold_listed_shown_and_cancelled_by_the_cli(
    stack: Stack, cli: Cli
) -> None:
    tenant, _ = fresh_tenant(stack)
    model = a_model(stack)
    row = cli_ok(
        cli(
            "reservations",
            "create",
            tenant,
            "--model",
            model,
            "--tokens-per-minute",
            "500",
            "--starts-at",
            hours(0),
            "--ends-at",
            hours(2),
            "--fee-usd",
            "20",
            "--actor",
            "bob",
        )
    )
    assert (row["model"], row["region"], row["tokens_per_minute"]) == (model, None, 500)
    assert (row["fee_usd"], row["actor"]) == ("20.00", "cli:bob")
    assert cli_ok(cli("reservations", "list", tenant)) == [row]
    assert cli_ok(cli("reservations", "show", str(row["id"]))) == row
    assert cli_ok(cli("reservations", "cancel", str(row["id"]), "--actor", "bob")) == row
    assert cli_ok(cli("reservations", "list", tenant)) == []
    assert [(a["action"], a["actor"]) for a in audit_of(stack, row["id"])] == [
        ("reservation.create", "cli:bob"),
        ("reservation.cancel", "cli:bob"),
    ]


def test_a_started_reservation_cannot_be_cancelled(stack: Stack, admin: Admin, cli: Cli) -> None:
    tenant, _ = fresh_tenant(stack)
    model = a_model(stack)
    # the API sells no past hour: a reservation in force is written as time would leave it
    ident = run_db(
        stack,
        "INSERT INTO reservations (tenant_id, model_id, tokens_per_minute, starts_at, ends_at, "
        "fee_usd, actor) SELECT $1, id, 100, date_trunc('hour', now()) - interval '1 hour', "
        "date_trunc('hour', now()) + interval '1 day', 10, 'test' FROM models WHERE name = $2 "
        "RETURNING id",
        tenant,
        model,
    )[0]["id"]
    before = written(stack, tenant)
    status, error = admin("DELETE", f"/admin/reservations/{ident}")
    assert status == 409 and "has started" in error["error"]["message"], error
    code, out, err = cli("reservations", "cancel", str(ident))
    assert (code, out) == (1, "") and err.startswith("error: ") and "has started" in err
    assert written(stack, tenant) == before == (1, 0)
    assert ok(admin("GET", f"/admin/reservations/{ident}"))["id"] == ident


def test_a_prepaid_tenant_cannot_reserve(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    run_db(stack, "UPDATE tenants SET billing_mode = 'prepaid' WHERE id = $1", tenant)
    status, error = admin("POST", f"/admin/tenants/{tenant}/reservations", body(a_model(stack)))
    assert status == 409 and "postpaid" in error["error"]["message"], error
    assert written(stack, tenant) == (0, 0)


def test_reservations_of_one_model_never_overlap(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    model, other = a_model(stack), a_model(stack)
    path = f"/admin/tenants/{tenant}/reservations"
    first = ok(admin("POST", path, body(model)))
    status, error = admin("POST", path, body(model, starts_at=hours(12), ends_at=hours(36)))
    assert status == 409, error
    assert f"reservation {first['id']}" in error["error"]["message"]
    status, error = admin("POST", path, body(model, region=a_region(stack)))  # any region too
    assert status == 409, error
    assert written(stack, tenant) == (1, 1)
    ok(admin("POST", path, body(model, starts_at=hours(24), ends_at=hours(48))))  # adjacent
    ok(admin("POST", path, body(other)))  # another model: its own capacity
    listed = ok(admin("GET", path))["data"]
    assert [(r["model"], r["starts_at"]) for r in listed] == [
        (model, first["starts_at"]),
        (other, first["starts_at"]),
        (model, listed[2]["starts_at"]),
    ]
    assert written(stack, tenant) == (3, 3)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"tokens_per_minute": "1000"}, "tokens_per_minute"),
        ({"starts_at": "2030-01-01T00:30:00Z"}, "starts_at"),
        ({"ends_at": "tomorrow"}, "ends_at"),
        ({"ends_at": hours(0)}, "ends_at"),
        ({"fee_usd": "10.001"}, "fee_usd"),
        ({"fee_usd": 1.5}, "fee_usd"),
        ({"region": ""}, "region"),
        ({"note": "x" * 501}, "note"),
        ({"gpus": 2}, "gpus"),
        ({"model": None}, "model"),
        # PostgreSQL text holds no NUL; a time that leaves datetime's years once in UTC
        ({"model": "a\x00b"}, "model"),
        ({"region": "a\x00b"}, "region"),
        ({"note": "a\x00b"}, "note"),
        ({"starts_at": "0001-01-01T00:00:00+01:00"}, "starts_at"),
        ({"ends_at": "9999-12-31T23:00:00-01:00"}, "ends_at"),
    ],
)
def test_a_bad_reservation_is_a_400_naming_its_field(
    stack: Stack, admin: Admin, change: dict[str, Any], param: str
) -> None:
    tenant, _ = fresh_tenant(stack)
    status, error = admin("POST", f"/admin/tenants/{tenant}/reservations", body("m", **change))
    assert status == 400 and error["error"]["param"] == param, error
    assert written(stack, tenant) == (0, 0)


def test_a_reservation_is_sold_ahead_only(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    started = (_START - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, error = admin(
        "POST", f"/admin/tenants/{tenant}/reservations", body(a_model(stack), starts_at=started)
    )
    assert status == 400 and error["error"]["param"] == "starts_at", error
    for sent in (None, [], {"model": "m"}):
        status, error = admin("POST", f"/admin/tenants/{tenant}/reservations", sent)
        assert status == 400, error
    assert written(stack, tenant) == (0, 0)


def test_unknown_tenants_models_regions_and_reservations_are_404(
    stack: Stack, admin: Admin
) -> None:
    tenant, _ = fresh_tenant(stack)
    model = a_model(stack)
    path = f"/admin/tenants/{tenant}/reservations"
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        for method, sent in (("POST", body(model)), ("GET", None)):
            status, error = admin(method, f"/admin/tenants/{unknown}/reservations", sent)
            assert status == 404 and error["error"]["code"] == "tenant_not_found", error
    status, error = admin("POST", path, body(f"no-such-{model}"))
    assert status == 404 and error["error"]["param"] == "model", error
    status, error = admin("POST", path, body(model, region="no-such-region"))
    assert status == 404 and error["error"]["param"] == "region", error
    assert written(stack, tenant) == (0, 0)
    for ident in ("999999999999", "abc", "-1", "0", "%C2%B2", "1" * 19):
        for method in ("GET", "DELETE"):
            status, error = admin(method, f"/admin/reservations/{ident}")
            assert status == 404 and error["error"]["code"] == "reservation_not_found", error


@pytest.mark.parametrize(
    ("options", "change"),
    [
        (("--tokens-per-minute", "lots"), {"tokens_per_minute": "lots"}),
        (("--tokens-per-minute", "0"), {"tokens_per_minute": 0}),
        (("--starts-at", "2030-01-01T00:30:00Z"), {"starts_at": "2030-01-01T00:30:00Z"}),
        (("--fee-usd", "-1"), {"fee_usd": "-1"}),
        (("--region", ""), {"region": ""}),
        (("--model", "no-such-model-anywhere"), {"model": "no-such-model-anywhere"}),
    ],
)
def test_the_cli_refuses_what_the_api_refuses_with_its_message(
    stack: Stack, admin: Admin, cli: Cli, options: tuple[str, ...], change: dict[str, Any]
) -> None:
    tenant, _ = fresh_tenant(stack)
    model = a_model(stack)
    argv = {"--model": model, "--tokens-per-minute": "1000", "--starts-at": hours(0)}
    argv |= {"--ends-at": hours(24), "--fee-usd": "1500.00"}
    argv |= dict(zip(options[::2], options[1::2], strict=True))
    code, out, err = cli("reservations", "create", tenant, *[a for kv in argv.items() for a in kv])
    status, error = admin("POST", f"/admin/tenants/{tenant}/reservations", body(model, **change))
    assert status in (400, 404), error
    assert (code, out, err) == (1, "", f"error: {error['error']['message']}\n")
    assert written(stack, tenant) == (0, 0)


@pytest.mark.parametrize(
    "argv",
    [
        ("reservations",),
        ("reservations", "create", "t", "--model", "m"),
        ("reservations", "show"),
        ("reservations", "cancel", "1", "2"),
        ("reservations", "extend", "1"),
    ],
)
def test_the_cli_prints_its_usage_for_bad_arguments(
    cli: Cli, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(*argv)
    assert exited.value.code == 2
    assert "usage: crosslogic" in capsys.readouterr().err  # the innermost parser's usage


def test_the_cli_says_which_reservation_it_does_not_know(cli: Cli) -> None:
    for action in ("show", "cancel"):
        assert cli("reservations", action, "abc") == (1, "", "error: No reservation 'abc'.\n")


NOW = datetime.now(UTC)
MISSING = object()
GOOD = {
    "model": "m",
    "tokens_per_minute": 1000,
    "starts_at": "2999-01-01T00:00:00Z",
    "ends_at": "2999-02-01T00:00:00Z",
    "fee_usd": "1500.00",
}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"region": "eu", "note": "Q4"},
        {"region": None, "note": ""},
        {"fee_usd": 0},
        {"fee_usd": "0.5"},
        {"fee_usd": 999999999999},
        {"fee_usd": 10**12},
        {"fee_usd": "1.001"},
        {"fee_usd": 1.5},
        {"fee_usd": -1},
        {"fee_usd": "1e3"},
        {"tokens_per_minute": 10**12},
        {"tokens_per_minute": 10**12 + 1},
        {"tokens_per_minute": 0},
        {"tokens_per_minute": "5"},
        {"tokens_per_minute": True},
        {"model": ""},
        {"model": "m" * 200},
        {"model": "m" * 201},
        {"model": 5},
        {"region": ""},
        {"region": 5},
        {"note": "x" * 500},
        {"note": "x" * 501},
        {"note": None},
        {"gpus": 2},
        {"model": MISSING},
        {"fee_usd": MISSING},
    ],
)
def test_the_create_schema_agrees_with_the_parser(change: dict[str, Any]) -> None:
    doc = openapi.document()
    validator = jsonschema.Draft202012Validator(
        {"components": doc["components"], "$ref": "#/components/schemas/ReservationCreate"}
    )
    sent = {k: v for k, v in {**GOOD, **change}.items() if v is not MISSING}
    try:
        reservation_spec(sent, now=NOW)
        accepted = True
    except Invalid:
        accepted = False
    assert validator.is_valid(sent) == accepted


def test_every_required_field_of_the_create_schema_is_required_by_the_parser() -> None:
    schema = openapi.document()["components"]["schemas"]["ReservationCreate"]
    for name in schema["required"]:
        with pytest.raises(Invalid, match="required"):
            reservation_spec({k: v for k, v in GOOD.items() if k != name}, now=NOW)
