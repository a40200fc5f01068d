"""Node identity and lifecycle: registration tokens register and do nothing else, a node's
credential acts on that node only, drains and removals stick, all of it audited; and through
the real Envoy, a drained node gets no new request while its in-flight stream completes, and
a removed node that still answers /health gets no traffic."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from crosslogic.admin.app import make_app
from crosslogic.admin.auth import NODE_ROUTES
from crosslogic.fleet import nodes
from crosslogic.fleet.lifecycle import after_heartbeat, forget_after, state
from crosslogic.ports import free_port
from crosslogic.settings import Settings
from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.cli import Cli, cli_ok
from tests.support.db import connect_and
from tests.support.fleet import audited, chat_requests, eds_status, listed, one_token, running
from tests.support.system import MODEL, own_system
from tests.support.waiting import wait_until


def call(
    stack: Stack, method: str, path: str, body: object = None, *, token: str | None
) -> tuple[int, Any]:
    """(status, JSON body) of an admin API call with ``token`` as the bearer secret."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.admin_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def refused(reply: tuple[int, Any], status: int) -> str:
    """The OpenAI-style error code of a refusal with ``status``."""
    got, body = reply
    assert got == status, body
    assert body["error"]["type"] in ("invalid_request_error", "server_error"), body
    return str(body["error"]["code"])


# --- the pure lifecycle -----------------------------------------------------------------------


def test_a_heartbeat_never_undoes_a_drain_or_a_removal() -> None:
    assert after_heartbeat("active", requests_running=3).status == "active"
    assert after_heartbeat("draining", requests_running=1).status == "draining"
    ended = after_heartbeat("draining", requests_running=0)
    assert (ended.status, ended.drained) == ("removed", True)
    assert after_heartbeat("removed", requests_running=0).removed
    assert after_heartbeat("dead", requests_running=0).forgotten
    assert after_heartbeat(None, requests_running=0).forgotten  # unknown: register again


def test_state_shows_silent_nodes_as_unhealthy() -> None:
    assert state("active", heartbeat_age_s=1, heartbeat_timeout_s=3) == "active"
    assert state("active", heartbeat_age_s=4, heartbeat_timeout_s=3) == "unhealthy"
    assert state("draining", heartbeat_age_s=4, heartbeat_timeout_s=3) == "unhealthy"
    assert state("removed", heartbeat_age_s=400, heartbeat_timeout_s=3) == "removed"
    assert forget_after(3) > 3


# --- identity, on the session's system, with nodes of a model of their own ------------------


@pytest.fixture(scope="module")
def fleet_model(stack: Stack) -> str:
    """A model no client uses: the fake nodes registered here never take demo traffic."""
    name = f"identity-{time.monotonic_ns()}"
    ok(Admin(stack)("POST", "/admin/models", {"name": name}))
    return name


@pytest.fixture(scope="module")
def region(stack: Stack) -> str:
    code = f"idr{time.monotonic_ns() % 10**9}"
    ok(Admin(stack)("POST", "/admin/regions", {"code": code, "name": "Identity test"}))
    return code


class FakeNode:
    """A node registered over HTTP (nothing listens at its address)."""

    def __init__(self, stack: Stack, model: str, *, token: str, **fields: Any) -> None:
        self.stack = stack
        self.id = f"fake-{time.monotonic_ns()}"
        self.body = {"node_id": self.id, "model": model, "address": "127.0.0.1"}
        self.body |= {"port": free_port(), **fields}
        self.credential = str(ok(self.register(token))["node_credential"])

    def register(self, token: str | None) -> tuple[int, Any]:
        return call(self.stack, "POST", "/admin/nodes/register", self.body, token=token)

    def beat(self, *, running: int = 0, token: str | None = None) -> tuple[int, Any]:
        body = {"requests_running": running, "requests_waiting": 0, "kv_cache_usage_perc": 0.1}
        path = f"/admin/nodes/{self.id}/heartbeat"
        return call(self.stack, "POST", path, body, token=token or self.credential)


@pytest.fixture()
def new_token(stack: Stack) -> Iterator[str]:
    created = ok(Admin(stack)("POST", "/admin/node-tokens", {"name": "test"}))
    assert created["token"].startswith("clrt_") and created["prefix"] in created["token"]
    yield str(created["token"])


def test_a_registration_token_registers_and_does_nothing_else(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token)
    assert node.credential.startswith("clnc_")
    assert refused(node.beat(token=new_token), 401) == "invalid_node_credential"
    drain = call(stack, "POST", f"/admin/nodes/{node.id}/drain", token=new_token)
    assert refused(drain, 401) == "invalid_node_credential"
    for method, path in (("GET", "/admin/nodes"), ("POST", "/admin/node-tokens")):
        code = refused(call(stack, method, path, {"name": "x"}, token=new_token), 403)
        assert code == "node_credential_not_allowed"


def test_the_operator_token_is_no_node_credential(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token)
    admin_token = stack.settings.admin_token
    assert refused(node.register(admin_token), 403) == "operator_token_not_allowed"
    assert refused(node.beat(token=admin_token), 403) == "operator_token_not_allowed"
    assert refused(node.register(None), 401) == "invalid_registration_token"


def test_a_scoped_token_registers_its_provider_and_region_only(
    stack: Stack, fleet_model: str, region: str
) -> None:
    scope = {"name": "aws-eu", "provider": "aws", "region": region}
    token = ok(Admin(stack)("POST", "/admin/node-tokens", scope))["token"]
    stray = FakeNode.__new__(FakeNode)
    stray.stack, stray.id = stack, f"stray-{time.monotonic_ns()}"
    stray.body = {"node_id": stray.id, "model": fleet_model, "address": "127.0.0.1"}
    stray.body |= {"port": free_port(), "provider": "gcp", "region": region}
    status, body = stray.register(token)
    assert (status, body["error"]["param"]) == (403, "provider")
    stray.body["provider"] = "aws"
    stray.body["region"] = "local"
    status, body = stray.register(token)
    assert (status, body["error"]["code"], body["error"]["param"]) == (
        403,
        "registration_token_out_of_scope",
        "region",
    )
    assert FakeNode(stack, fleet_model, token=token, provider="aws", region=region).credential


def test_a_credential_acts_for_its_own_node_only(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    mine = FakeNode(stack, fleet_model, token=new_token)
    other = FakeNode(stack, fleet_model, token=new_token)
    assert mine.beat() == (200, {"status": "ok"})
    assert refused(other.beat(token=mine.credential), 403) == "node_credential_not_allowed"
    for action in ("drain", "deregister"):
        reply = call(stack, "POST", f"/admin/nodes/{other.id}/{action}", token=mine.credential)
        assert refused(reply, 403) == "node_credential_not_allowed"
    assert refused(other.beat(token="not-a-credential"), 401) == "invalid_node_credential"
    # every operator endpoint of the admin API, whatever it would do: refused before it runs
    fill = {"node_id": other.id, "tenant_id": "t", "environment_id": "e", "key_id": "k"}
    for route in make_app(Settings()).router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        pattern = resource.canonical
        if not pattern.startswith("/admin/") or (route.method, pattern) in NODE_ROUTES:
            continue
        if pattern == "/admin/openapi.json":
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: fill.get(m[1], "x"), pattern)
        reply = call(stack, route.method, path, {}, token=mine.credential)
        assert refused(reply, 403) == "node_credential_not_allowed", (route.method, pattern)
    assert listed(stack, other.id)["status"] == "active"  # nothing happened to it


def test_a_revoked_token_cannot_register_and_its_nodes_keep_working(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token)
    token_id = next(
        t["id"]
        for t in ok(Admin(stack)("GET", "/admin/node-tokens"))["data"]
        if new_token.startswith(t["prefix"]) and t["revoked_at"] is None
    )
    revoked = ok(Admin(stack)("DELETE", f"/admin/node-tokens/{token_id}"))
    assert revoked["revoked_at"] is not None and "token" not in revoked
    assert refused(node.register(new_token), 401) == "invalid_registration_token"
    assert node.beat() == (200, {"status": "ok"})
    assert [a for a, _ in audited(stack, token_id)] == ["node_token.create", "node_token.revoke"]
    assert refused(Admin(stack)("DELETE", "/admin/node-tokens/nope"), 404)


def test_metadata_and_load_are_listed(stack: Stack, fleet_model: str, new_token: str) -> None:
    node = FakeNode(
        stack,
        fleet_model,
        token=new_token,
        provider="aws",
        zone="local-1a",
        gpu_type="H100",
        gpu_count=8,
        capacity=64,
        spot=True,
    )
    assert node.beat(running=5) == (200, {"status": "ok"})
    shown = listed(stack, node.id)
    assert {k: shown[k] for k in ("provider", "region", "zone", "gpu_type")} == {
        "provider": "aws",
        "region": "local",
        "zone": "local-1a",
        "gpu_type": "H100",
    }
    assert (shown["gpu_count"], shown["capacity"], shown["spot"]) == (8, 64, True)
    assert (shown["requests_running"], shown["kv_cache_usage_perc"]) == (5, pytest.approx(0.1))
    assert (shown["state"], shown["live"], shown["model"]) == ("active", True, fleet_model)
    # the model's default strategy, least loaded: 1000 * (1 - 0.1 / 2) / (1 + 5 running)
    assert shown["weight"] == 158
    assert 0 < shown["health_score"] <= 1
    assert "credential_hash" not in shown and "node_credential" not in shown


def test_a_removed_node_that_heartbeats_stays_removed(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token)
    admin = Admin(stack, actor="bob")
    assert ok(admin("DELETE", f"/admin/nodes/{node.id}"))["status"] == "removed"
    for _ in range(2):
        assert refused(node.beat(), 410) == "node_removed"
    assert listed(stack, node.id)["status"] == "removed"
    assert refused(call(stack, "POST", f"/admin/nodes/{node.id}/drain", token=node.credential), 409)
    assert audited(stack, node.id) == [
        ("node.register", f"node:{node.id}"),
        ("node.remove", "operator:bob"),
    ]
    # an unknown node, by contrast, is asked to register again
    ghost = call(stack, "POST", "/admin/nodes/ghost-1/heartbeat", {}, token=node.credential)
    assert refused(ghost, 404) == "node_not_found"


def test_a_node_drains_itself_and_is_removed_when_idle(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token, spot=True)
    drain = call(stack, "POST", f"/admin/nodes/{node.id}/drain", token=node.credential)
    assert ok(drain)["status"] == "draining"
    assert node.beat(running=2) == (200, {"status": "draining"})  # in flight: still draining
    assert refused(node.beat(running=0), 410) == "node_removed"  # done: removed
    assert listed(stack, node.id)["status"] == "removed"
    assert audited(stack, node.id) == [
        ("node.register", f"node:{node.id}"),
        ("node.drain", f"node:{node.id}"),
        ("node.drained", "system"),
    ]


def test_re_registering_brings_a_dead_or_removed_node_back(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    node = FakeNode(stack, fleet_model, token=new_token)
    ok(call(stack, "POST", f"/admin/nodes/{node.id}/deregister", token=node.credential))
    assert refused(node.beat(), 404) == "node_not_found"  # dead: come back by registering
    old = node.credential
    node.credential = ok(node.register(new_token))["node_credential"]
    assert node.credential != old
    assert refused(node.beat(token=old), 403) == "node_credential_not_allowed"
    assert node.beat() == (200, {"status": "ok"})


def test_the_sweep_ends_overdue_drains_and_forgets_silent_nodes(
    stack: Stack, fleet_model: str, new_token: str
) -> None:
    draining = FakeNode(stack, fleet_model, token=new_token)
    silent = FakeNode(stack, fleet_model, token=new_token)
    ok(Admin(stack)("POST", f"/admin/nodes/{draining.id}/drain"))

    async def sweep(conn: Any) -> list[str]:
        async with conn.transaction():
            # a backdated heartbeat stands for minutes of silence
            await conn.execute(
                "UPDATE nodes SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1",
                silent.id,
            )
            return await nodes.sweep(conn, drain_timeout=0.001, heartbeat_timeout=3)

    changed = connect_and(stack, sweep)
    assert {draining.id, silent.id} <= set(changed)
    assert listed(stack, draining.id)["status"] == "removed"
    assert listed(stack, silent.id)["status"] == "dead"
    assert refused(silent.beat(), 404) == "node_not_found"  # it comes back by registering
    assert ok(silent.register(new_token))["node_id"] == silent.id
    assert listed(stack, silent.id)["state"] == "active"
    assert audited(stack, silent.id)[1] == ("node.expire", "system")


def test_the_command_line_lists_drains_removes_and_manages_tokens(
    stack: Stack, cli: Cli, fleet_model: str
) -> None:
    created = cli_ok(cli("nodes", "tokens", "create", "cli-token", "--actor", "carol"))
    node = FakeNode(stack, fleet_model, token=created["token"])
    assert any(t["id"] == created["id"] for t in cli_ok(cli("nodes", "tokens", "list")))
    listing = cli_ok(cli("nodes", "list"))
    assert next(n for n in listing if n["id"] == node.id)["state"] == "active"
    assert cli_ok(cli("nodes", "drain", node.id, "--actor", "carol"))["status"] == "draining"
    assert cli_ok(cli("nodes", "remove", node.id, "--actor", "carol"))["status"] == "removed"
    assert cli_ok(cli("nodes", "tokens", "revoke", created["id"]))["revoked_at"]
    assert refused(node.register(created["token"]), 401) == "invalid_registration_token"
    code, _, err = cli("nodes", "drain", "no-such-node")
    assert code == 1 and "Unknown node" in err
    assert audited(stack, node.id)[1:] == [
        ("node.drain", "cli:carol"),
        ("node.remove", "cli:carol"),
    ]


# --- through Envoy, on a system of its own ----------------------------------------------------


@pytest.fixture(scope="module")
def paced() -> Iterator[Stack]:
    """Two paced nodes (20 tokens/s: a 120-token stream lasts 6 s, long enough for a drain
    to reach Envoy under the 2-core test load)."""
    with own_system(nodes=0) as running:
        for name in ("idn-a", "idn-b"):
            running.start_node(name, extra=("--tokens-per-second", "20"))
        running.wait_healthy_nodes(2)
        yield running


def node_url(stack: Stack, node_id: str) -> str:
    node = listed(stack, node_id)
    return f"http://{node['address']}:{node['port']}"


def test_the_stack_gives_its_nodes_the_registration_token_only(paced: Stack) -> None:
    for child in paced.nodes:
        with open(f"/proc/{child.proc.pid}/environ", "rb") as f:
            names = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert b"ADMIN_TOKEN" not in names
        assert names[b"NODE_REGISTRATION_TOKEN"].decode() == paced.settings.node_registration_token
    rows = ok(Admin(paced)("GET", "/admin/node-tokens"))["data"]
    assert [t["name"] for t in rows] == ["NODE_REGISTRATION_TOKEN"]


def test_a_drained_node_gets_no_new_request_while_its_stream_completes(paced: Stack) -> None:
    assert paced.demo is not None
    client = openai.OpenAI(base_url=paced.base_url, api_key=paced.demo.api_key, max_retries=0)
    urls = {node_id: node_url(paced, node_id) for node_id in ("idn-a", "idn-b")}
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=120, stream=True
    )
    chunks = [next(stream)]
    drained = wait_until(
        "the stream's node", lambda: next((n for n, u in urls.items() if running(u) > 0), None)
    )
    other = next(n for n in urls if n != drained)
    port = int(urls[drained].rsplit(":", 1)[1])
    ok(Admin(paced, actor="dave")("POST", f"/admin/nodes/{drained}/drain"))
    started = time.monotonic()
    wait_until("Envoy to drain the node", lambda: eds_status(paced, port) == "DRAINING")
    applied_s = time.monotonic() - started
    before = {n: chat_requests(u) for n, u in urls.items()}
    for _ in range(10):
        one_token(client)
    chunks.extend(stream)  # the stream started before the drain runs to its end
    endings = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [e for e in endings if e] == ["length"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 120
    after = {n: chat_requests(u) for n, u in urls.items()}
    assert after[drained] - before[drained] == 1  # the stream itself, counted when it ended
    assert after[other] - before[other] == 10
    # idle now: its next heartbeat ends the drain; it is removed and stays so
    wait_until("the drain to end", lambda: listed(paced, drained)["status"] == "removed")
    log = paced.data_dir / "logs" / f"node-{drained}.log"
    wait_until("the node to stop registering", lambda: "not registering again" in log.read_text())
    assert listed(paced, drained)["status"] == "removed"
    actions = audited(paced, drained)
    assert ("node.drain", "operator:dave") in actions and ("node.drained", "system") in actions
    assert applied_s < 5  # a poll interval and a push, under the 2-core test load


def test_a_removed_node_that_answers_health_checks_gets_no_traffic(paced: Stack) -> None:
    assert paced.demo is not None
    client = openai.OpenAI(base_url=paced.base_url, api_key=paced.demo.api_key, max_retries=0)
    remaining = [n["id"] for n in ok(Admin(paced)("GET", "/admin/nodes"))["nodes"] if n["live"]]
    assert len(remaining) == 1
    victim = remaining[0]
    paced.start_node("idn-c", extra=("--tokens-per-second", "20"))
    paced.wait_healthy_nodes(2)
    url = node_url(paced, victim)
    port = int(url.rsplit(":", 1)[1])
    ok(Admin(paced)("DELETE", f"/admin/nodes/{victim}"))
    wait_until("Envoy to drop the node", lambda: eds_status(paced, port) is None)
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        assert r.status == 200  # alive and well, yet removed
    before = chat_requests(url)
    for _ in range(10):
        one_token(client)
    assert chat_requests(url) == before
    assert listed(paced, victim)["status"] == "removed"


def test_a_spot_node_drains_itself_on_its_interruption_notice(paced: Stack) -> None:
    spot = paced.start_node("idn-spot", extra=("--spot",))
    paced.wait_healthy_nodes(2)
    assert listed(paced, "idn-spot")["spot"] is True
    port = int(node_url(paced, "idn-spot").rsplit(":", 1)[1])
    spot.proc.send_signal(signal.SIGUSR1)  # the cloud's notice, as the simulator takes it
    wait_until("the drain to end", lambda: listed(paced, "idn-spot")["status"] == "removed")
    wait_until("Envoy to drop the node", lambda: eds_status(paced, port) is None)
    actions = audited(paced, "idn-spot")
    assert actions[-2:] == [("node.drain", "node:idn-spot"), ("node.drained", "system")]
