"""A model's scheduling strategy in the catalog: set at creation or changed live through the
admin API and the command line, validated, audited, and published by xDS to Envoy."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import run_db
from tests.support.waiting import wait_until


def _policy(stack: Stack, cluster: str) -> str | None:
    url = f"{stack.envoy_admin_url}/config_dump?resource=dynamic_active_clusters"
    with urllib.request.urlopen(url, timeout=5) as r:
        configs: list[dict[str, Any]] = json.load(r)["configs"]
    for config in configs:
        if config["cluster"]["name"] == cluster:
            return str(config["cluster"].get("lb_policy", "ROUND_ROBIN"))
    return None


def test_the_strategy_is_a_live_catalog_setting(stack: Stack, admin: Admin) -> None:
    name = f"strategy-{time.monotonic_ns()}"
    created = ok(admin("POST", "/admin/models", {"name": name, "lb_strategy": "random"}))
    assert created["lb_strategy"] == "random"
    cluster = f"model_{created['id']}"
    wait_until(
        "Envoy to balance the new model at random", lambda: _policy(stack, cluster) == "RANDOM"
    )
    changed = ok(admin("PATCH", f"/admin/models/{name}", {"lb_strategy": "prefix_affinity"}))
    assert changed["lb_strategy"] == "prefix_affinity"
    wait_until("Envoy to hash the model's requests", lambda: _policy(stack, cluster) == "MAGLEV")
    status, body = admin("PATCH", f"/admin/models/{name}", {"lb_strategy": "fastest"})
    assert (status, body["error"]["param"]) == (400, "lb_strategy")
    status, body = admin("POST", "/admin/models", {"name": name + "-x", "lb_strategy": 3})
    assert (status, body["error"]["param"]) == (400, "lb_strategy")
    actions = run_db(
        stack,
        "SELECT action, after->>'lb_strategy' AS strategy FROM audit_log "
        "WHERE entity_type = 'model' AND entity_id = $1 ORDER BY id",
        str(created["id"]),
    )
    assert [(r["action"], r["strategy"]) for r in actions] == [
        ("model.create", "random"),
        ("model.update", "prefix_affinity"),
    ]
    ok(admin("PATCH", f"/admin/models/{name}", {"status": "deprecated"}))


def test_the_command_line_sets_the_strategy(cli: Cli) -> None:
    name = f"strategy-cli-{time.monotonic_ns()}"
    created = cli_ok(cli("models", "create", name, "--lb-strategy", "round_robin"))
    assert created["lb_strategy"] == "round_robin"
    updated = cli_ok(cli("models", "update", name, "--lb-strategy", "health_weighted"))
    assert updated["lb_strategy"] == "health_weighted"
    code, _, err = cli("models", "update", name, "--lb-strategy", "fastest")
    assert code != 0 and "lb_strategy" in err
    cli_ok(cli("models", "deprecate", name))
