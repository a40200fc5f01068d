"""GPU pools through the admin API and ``crosslogic pools ...``, against the real stack:
declared, listed, shown, changed and deleted, every change audited; refused with the
house's 400/404/409 and nothing written; both edges refuse the same input with the same
message. (The orchestrator is tested in tests/test_orchestrator.py.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db


def a_model(stack: Stack) -> str:
    name = f"pool-m-{time.monotonic_ns()}"
    run_db(stack, "INSERT INTO models (name) VALUES ($1)", name)
    return name


def a_name() -> str:
    return f"p{time.monotonic_ns() % 10**12}"


def spec(model: str, name: str, /, **change: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "accelerator": "A100",
        "replica_tokens_per_minute": 50_000,
        "replicas": 2,
        **change,
    }


def audit_of(stack: Stack, name: str) -> list[tuple[str, str]]:
    rows = run_db(
        stack,
        "SELECT action, actor FROM audit_log WHERE entity_type = 'pool' AND entity_id = $1 "
        "ORDER BY id",
        name,
    )
    return [(r["action"], r["actor"]) for r in rows]


def test_a_pool_is_declared_listed_shown_changed_and_deleted(stack: Stack, admin: Admin) -> None:
    model, name = a_model(stack), a_name()
    status, created = admin("POST", "/admin/pools", spec(model, name, spot=True))
    assert status == 201, created
    assert (created["min_replicas"], created["max_replicas"], created["spot"]) == (2, 2, True)
    assert created["target_replicas"] is None  # no orchestrator round yet
    listed = ok(admin("GET", "/admin/pools"))["data"]
    mine = next(p for p in listed if p["name"] == name)
    assert (mine["replicas_up"], mine["replicas_launching"]) == (0, 0)
    shown = ok(admin("GET", f"/admin/pools/{name}"))
    assert shown["launches"] == [] and shown["model"] == model
    changed = ok(admin("PATCH", f"/admin/pools/{name}", {"min_replicas": 1, "max_replicas": 6}))
    assert (changed["min_replicas"], changed["max_replicas"], changed["spot"]) == (1, 6, True)
    assert ok(admin("DELETE", f"/admin/pools/{name}"))["deleted"] is True
    assert admin("GET", f"/admin/pools/{name}")[0] == 404
    assert audit_of(stack, name) == [
        ("pool.create", "operator:alice"),
        ("pool.update", "operator:alice"),
        ("pool.delete", "operator:alice"),
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"replicas": 2, "min_replicas": 1}, "replicas"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"clouds": ["aws"], "cloud_regions": ["us-east-1", "us-east-1"]}, "cloud_regions"),
        ({"cloud_regions": ["us-east-1"]}, "cloud_regions"),
        ({"vllm_args": "--enforce-eager"}, "vllm_args"),
        ({"region": "nowhere-at-all"}, "region"),
        ({"model": "no-such-model"}, "model"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_pool_is_a_400_naming_the_field_and_writes_nothing(
    stack: Stack, admin: Admin, change: dict[str, Any], param: str
) -> None:
    name = a_name()
    status, body = admin("POST", "/admin/pools", spec(a_model(stack), name, **change))
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert run_db(stack, "SELECT count(*) FROM pools WHERE name = $1", name)[0][0] == 0
    assert audit_of(stack, name) == []


def test_duplicates_unknown_pools_and_bad_changes(stack: Stack, admin: Admin) -> None:
    model, name = a_model(stack), a_name()
    ok(admin("POST", "/admin/pools", spec(model, name)))
    status, body = admin("POST", "/admin/pools", spec(model, name))
    assert (status, body["error"]["code"]) == (409, "pool_exists")
    for method in ("GET", "PATCH", "DELETE"):
        status, body = admin(method, "/admin/pools/no-such-pool", {"replicas": 1})
        assert (status, body["error"]["code"]) == (404, "pool_not_found"), method
    status, body = admin("PATCH", f"/admin/pools/{name}", {"min_replicas": 5, "max_replicas": 1})
    assert (status, body["error"]["param"]) == (400, "min_replicas")
    status, body = admin("PATCH", f"/admin/pools/{name}", {"name": "renamed"})
    assert (status, body["error"]["param"]) == (400, "name")
    status, body = admin("PATCH", f"/admin/pools/{name}", {})
    assert status == 400
    assert ok(admin("GET", f"/admin/pools/{name}"))["max_replicas"] == 2  # unchanged
    assert audit_of(stack, name) == [("pool.create", "operator:alice")]


def test_the_command_line_manages_pools_and_refuses_like_the_api(
    stack: Stack, admin: Admin, cli: Cli
) -> None:
    model, name = a_model(stack), a_name()
    created = cli_ok(
        cli(
            "pools", "create", name, "--model", model, "--accelerator", "L4", "--gpus", "2",
            "--min-replicas", "0", "--max-replicas", "3", "--spot", "--cloud", "aws",
            "--cloud-region", "us-east-1", "--vllm-arg=--max-model-len", "--vllm-arg=8192",
            "--replica-tpm", "30000", "--actor", "bob",
        )
    )  # fmt: skip
    assert created["vllm_args"] == ["--max-model-len", "8192"]
    assert created["clouds"] == ["aws"] and created["cloud_regions"] == ["us-east-1"]
    assert any(p["name"] == name for p in cli_ok(cli("pools", "list")))
    assert cli_ok(cli("pools", "show", name))["gpu_count"] == 2
    assert (
        cli_ok(cli("pools", "update", name, "--replicas", "1", "--no-fallback"))[
            "on_demand_fallback"
        ]
        is False
    )
    cli_ok(cli("pools", "delete", name))
    assert [action for action, _ in audit_of(stack, name)] == [
        "pool.create",
        "pool.update",
        "pool.delete",
    ]
    assert audit_of(stack, name)[0][1] == "cli:bob"
    # the same refusal, in the same words, from both edges
    code, _, err = cli("pools", "create", a_name(), "--model", model, "--accelerator", "L4",
                       "--replicas", "1", "--gpus", "17", "--replica-tpm", "1")  # fmt: skip
    status, body = admin(
        "POST", "/admin/pools", spec(model, a_name(), accelerator="L4", gpu_count=17)
    )
    assert code == 1 and status == 400
    assert err.strip() == f"error: {body['error']['message']}"
    code, _, err = cli("pools", "show", "no-such-pool")
    assert code == 1 and "No pool 'no-such-pool'" in err
