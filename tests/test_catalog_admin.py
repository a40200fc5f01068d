"""The catalog through the admin API and the command line: models, regions, price versions
and tenant overrides; audited, transactional, 400 naming the field, 404, 409."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from crosslogic.catalog.money import as_decimal
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db
from tests.support.tenants import fresh_tenant


def _name(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def _refused(reply: tuple[int, Any], status: int, param: str | None) -> dict[str, Any]:
    code, body = reply
    assert code == status, body
    assert body["error"]["param"] == param, body
    return dict(body["error"])


def _audited(stack: Stack, entity: str, entity_id: str) -> list[str]:
    rows = run_db(
        stack,
        "SELECT action FROM audit_log WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
        entity,
        entity_id,
    )
    return [r["action"] for r in rows]


def test_models_are_catalog_entries(stack: Stack, admin: Admin) -> None:
    name = _name("cat")
    body = {"name": name, "family": "llama", "prompt_per_mtok": 0.5, "completion_per_mtok": "1.5"}
    created = ok(admin("POST", "/admin/models", body))
    assert created["prompt_per_mtok"] == "0.500000" and created["embedding_per_mtok"] == "0.500000"
    assert created["context_length"] == 8192 and created["status"] == "active"
    by_id = ok(admin("GET", f"/admin/models/{created['id']}"))
    assert by_id == ok(admin("GET", f"/admin/models/{name}"))
    assert name in [m["name"] for m in ok(admin("GET", "/admin/models"))["data"]]
    changed = ok(admin("PATCH", f"/admin/models/{name}", {"context_length": 32768}))
    assert changed["context_length"] == 32768
    deprecated = ok(admin("PATCH", f"/admin/models/{name}", {"status": "deprecated"}))
    assert deprecated["status"] == "deprecated"
    assert _audited(stack, "model", str(created["id"])) == [
        "model.create",
        "model.update",
        "model.deprecate",
    ]
    _refused(admin("POST", "/admin/models", {"name": name}), 409, "name")
    _refused(
        admin("POST", "/admin/models", {"name": "x", "prompt_per_mtok": 1}),
        400,
        "completion_per_mtok",
    )
    _refused(admin("PATCH", f"/admin/models/{name}", {"status": "gone"}), 400, "status")
    _refused(admin("PATCH", "/admin/models/no-such-model", {"status": "active"}), 404, None)
    _refused(admin("GET", "/admin/models/no-such-model/prices"), 404, None)


def test_price_versions_are_added_never_retroactive(stack: Stack, admin: Admin) -> None:
    name = _name("priced")
    ok(admin("POST", "/admin/models", {"name": name}))
    later = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    body = {"prompt_per_mtok": "1", "completion_per_mtok": "2", "effective_at": later.isoformat()}
    version = ok(admin("POST", f"/admin/models/{name}/prices", body))
    assert version["embedding_per_mtok"] == "1.000000"
    history = ok(admin("GET", f"/admin/models/{name}/prices"))["data"]
    assert [v["id"] for v in history][-1] == version["id"] and len(history) == 2
    assert history[0]["prompt_per_mtok"] == "0.000000"  # the creation's price, since the epoch
    # the scheduled price is not in force yet: the model shows the first one
    assert ok(admin("GET", f"/admin/models/{name}"))["price_id"] == history[0]["id"]
    _refused(admin("POST", f"/admin/models/{name}/prices", body), 409, "effective_at")
    past = {**body, "effective_at": "2020-01-01T00:00:00Z"}
    _refused(admin("POST", f"/admin/models/{name}/prices", past), 400, "effective_at")
    bad = {**body, "completion_per_mtok": "0.1234567"}
    _refused(admin("POST", f"/admin/models/{name}/prices", bad), 400, "completion_per_mtok")
    assert (
        len(ok(admin("GET", f"/admin/models/{name}/prices"))["data"]) == 2
    )  # nothing half-written
    assert _audited(stack, "model_price", str(version["id"])) == ["model_price.create"]


def test_regions_and_their_multipliers(stack: Stack, admin: Admin) -> None:
    code = f"r-{time.monotonic_ns()}"
    region = ok(admin("POST", "/admin/regions", {"code": code, "name": "Test", "provider": "x"}))
    assert region["price_multiplier"] == "1.0000"
    changed = ok(admin("PATCH", f"/admin/regions/{code}", {"price_multiplier": "1.25"}))
    assert changed["price_multiplier"] == "1.2500"
    assert code in [r["code"] for r in ok(admin("GET", "/admin/regions"))["data"]]
    _refused(admin("POST", "/admin/regions", {"code": code, "name": "Again"}), 409, "code")
    _refused(
        admin("PATCH", f"/admin/regions/{code}", {"price_multiplier": 0}), 400, "price_multiplier"
    )
    _refused(admin("PATCH", "/admin/regions/nowhere", {"name": "n"}), 404, None)
    _refused(admin("POST", "/admin/regions", {"code": "Bad Code", "name": "n"}), 400, "code")
    assert _audited(stack, "region", code) == ["region.create", "region.update"]


def test_tenant_overrides_are_versioned(stack: Stack, admin: Admin) -> None:
    tenant, _ = fresh_tenant(stack)
    model = _name("override")
    ok(admin("POST", "/admin/models", {"name": model}))
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    contract = ok(
        admin(
            "POST",
            f"/admin/tenants/{tenant}/prices",
            {"model": model, "prompt_per_mtok": 0.1, "completion_per_mtok": 0.2},
        )
    )
    assert contract["kind"] == "contract" and contract["embedding_per_mtok"] == "0.100000"
    discount = ok(
        admin(
            "POST",
            f"/admin/tenants/{tenant}/prices",
            {"model": model, "discount_percent": 10, "effective_at": soon},
        )
    )
    assert (discount["kind"], discount["discount_percent"]) == ("discount", "10.00")
    removed = ok(admin("DELETE", f"/admin/tenants/{tenant}/prices/{model}"))
    assert removed["kind"] == "none"
    listed = ok(admin("GET", f"/admin/tenants/{tenant}/prices?model={model}"))["data"]
    assert [v["kind"] for v in listed] == ["contract", "none", "discount"]
    _refused(
        admin("DELETE", f"/admin/tenants/{tenant}/prices/{model}?effective_at=2020-01-01"),
        400,
        "effective_at",
    )
    both = {"model": model, "discount_percent": 10, "prompt_per_mtok": 1}
    _refused(admin("POST", f"/admin/tenants/{tenant}/prices", both), 400, "prompt_per_mtok")
    unknown_model = {"model": "no-such-model", "discount_percent": 10}
    _refused(admin("POST", f"/admin/tenants/{tenant}/prices", unknown_model), 404, "model")
    nobody = "00000000-0000-0000-0000-000000000000"
    _refused(
        admin("POST", f"/admin/tenants/{nobody}/prices", {"model": model, "discount_percent": 5}),
        404,
        None,
    )
    again = {"model": model, "discount_percent": 5, "effective_at": soon}
    _refused(admin("POST", f"/admin/tenants/{tenant}/prices", again), 409, "effective_at")
    assert len(ok(admin("GET", f"/admin/tenants/{tenant}/prices"))["data"]) == 3
    actions = _audited(stack, "tenant_price", f"{tenant}:{contract['model_id']}")
    assert actions == ["tenant_price.set", "tenant_price.set", "tenant_price.remove"]


def test_the_command_line_manages_the_catalog(stack: Stack, cli: Cli) -> None:
    model = _name("cli")
    created = cli_ok(cli("models", "create", model, "--prompt", "0.3", "--completion", "0.9"))
    assert created["prompt_per_mtok"] == "0.300000"
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    version = cli_ok(
        cli("prices", "add", model, "--prompt", "1", "--completion", "2", "--effective-at", later)
    )
    assert [v["id"] for v in cli_ok(cli("prices", "list", model))][-1] == version["id"]
    assert cli_ok(cli("models", "deprecate", model, "--actor", "bob"))["status"] == "deprecated"
    code = f"c-{time.monotonic_ns()}"
    cli_ok(cli("regions", "create", code, "--name", "CLI", "--multiplier", "2"))
    assert (
        cli_ok(cli("regions", "update", code, "--multiplier", "0.5"))["price_multiplier"]
        == "0.5000"
    )
    tenant, _ = fresh_tenant(stack)
    cli_ok(cli("tenant-prices", "set", tenant, model, "--discount", "20"))
    assert [o["kind"] for o in cli_ok(cli("tenant-prices", "list", tenant))] == ["discount"]
    assert cli_ok(cli("tenant-prices", "remove", tenant, model))["kind"] == "none"
    for argv, message in (
        (("prices", "add", model, "--prompt", "x", "--completion", "1"), "'prompt_per_mtok'"),
        (("regions", "update", code, "--multiplier", "-1"), "'price_multiplier'"),
        (("tenant-prices", "set", tenant, model, "--discount", "101"), "'discount_percent'"),
        (("models", "update", model, "--context-length", "0"), "'context_length'"),
        (("models", "show", "no-such-model"), "No model 'no-such-model'"),
    ):
        code_, _, err = cli(*argv)
        assert code_ == 1 and err.startswith("error: ") and message in err, err
    assert (
        run_db(
            stack,
            "SELECT actor FROM audit_log WHERE action = 'model.deprecate' AND entity_id = $1",
            str(created["id"]),
        )[0]["actor"]
        == "cli:bob"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.2, Decimal("0.2")),
        ("0.25", Decimal("0.25")),
        (3, Decimal(3)),
        ("1e3", None),
        ("-1", None),
        (True, None),
    ],
)
def test_money_input(value: object, expected: Decimal | None) -> None:
    assert as_decimal(value) == expected
