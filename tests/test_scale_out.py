"""The scaled-out shape on one machine: a Redis Cluster of three masters with a replica
each (REDIS_CLUSTER), three gateways (an Envoy and the billing consumer of its access log
each, GATEWAYS=3) and two processes of every service, on one Postgres.

Shown through Envoy with the openai SDK: each layer's limit exact across all gateways (the
global layer shared by every rate-limit process through its leases), revocation and new
nodes reaching every gateway, every request billed exactly once by its own gateway's
consumer (an Envoy killed included), and a Redis master failed over with the limits it held.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from crosslogic.contracts.counters import counter_key
from crosslogic.contracts.journal import boots_key, journal_key
from crosslogic.probes import http_ok
from crosslogic.redis_cluster import key_slot
from crosslogic.stack import Stack
from tests.support.admin import Admin, new_key, ok
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.ratelimits import notify_and_wait, set_limit
from tests.support.redis_servers import Cluster, running_cluster
from tests.support.system import MODEL, own_system
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until

SETTLED = 'crosslogic_billing_token_settlements_total{result="ok"}'
GATEWAYS = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(replicas=1) as running:
        yield running


@pytest.fixture(scope="module")
def system(cluster: Cluster) -> Iterator[Stack]:
    with own_system(
        nodes=2,
        redis_cluster=cluster.seeds,
        gateways=GATEWAYS,
        admin_workers=2,
        extauthz_workers=2,
        ratelimit_workers=2,
        xds_replicas=2,
    ) as running:
        assert running.redis is None  # no embedded Redis beside the cluster
        assert [g.settings.gateway_id for g in running.gateways] == [
            "gateway",
            "gateway-2",
            "gateway-3",
        ]
        yield running


def client(stack: Stack, n: int, key: str) -> openai.OpenAI:
    """A client of gateway ``n`` (the n-th Envoy, from 0)."""
    return openai.OpenAI(base_url=stack.gateways[n].base_url, api_key=key, max_retries=0)


def ask(stack: Stack, n: int, key: str) -> str:
    """One chat completion through gateway ``n``: its x-request-id."""
    raw = client(stack, n, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    return str(raw.headers["x-request-id"])


def burst(stack: Stack, keys: list[str], count: int) -> list[int]:
    """``count`` requests spread over every gateway and ``keys``, 8 at a time."""

    def one(i: int) -> int:
        try:
            ask(stack, i % GATEWAYS, keys[i % len(keys)])
            return 200
        except openai.APIStatusError as exc:
            assert exc.status_code == 429, (exc.status_code, exc.response.text)
            return 429

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("layer", ["key", "environment", "tenant"])
def test_each_layer_is_exact_across_gateways(system: Stack, layer: str) -> None:
    tenant, env = fresh_tenant(system)
    keys = [key_in(system, tenant, env) for _ in range(3)]
    subject = {"tenant": tenant, "environment": env, "key": keys[0].api_key_id}[layer]
    plaintexts = [k.plaintext for k in (keys[:1] if layer == "key" else keys)]
    set_limit(system, layer, subject, requests_per_minute=10)
    statuses = burst(system, plaintexts, 30)
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_the_global_layer_is_one_limit_across_gateways_and_processes(system: Stack) -> None:
    tenant, env = fresh_tenant(system)
    keys = [key_in(system, tenant, env).plaintext for _ in range(4)]
    try:
        set_limit(system, "global", "", requests_per_minute=12)
        # three Envoys, two rate-limit processes: leases from one key, one budget
        assert burst(system, keys, 45).count(200) == 12
    finally:
        run_db(system, "DELETE FROM rate_limits WHERE scope = 'global'")
        notify_and_wait(system)


def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(system: Stack) -> None:
    admin = Admin(system)
    tenant = ok(admin("POST", "/admin/tenants", {"name": f"revoke-{time.monotonic_ns()}"}))
    env = ok(admin("POST", f"/admin/tenants/{tenant['id']}/environments", {"name": "prod"}))
    key = new_key(admin, env)
    for i in range(12):  # cached by both ext_authz processes, through every gateway
        ask(system, i % GATEWAYS, key["key"])
    ok(admin("POST", f"/admin/keys/{key['key_id']}/revoke"))
    revoked_at = time.monotonic()
    refused = [False] * GATEWAYS
    while not all(refused):
        for n in range(GATEWAYS):
            try:
                ask(system, n, key["key"])
            except openai.AuthenticationError:
                refused[n] = True
        assert time.monotonic() - revoked_at < 1.0, f"refused by {refused} after 1 s"
    for i in range(12):  # and no process behind any gateway accepts it any more
        with pytest.raises(openai.AuthenticationError):
            ask(system, i % GATEWAYS, key["key"])


def test_a_new_node_reaches_every_gateway(system: Stack) -> None:
    node = system.start_node(f"{MODEL}-scale")
    try:
        system.wait_healthy_nodes(3)  # in each Envoy: both xDS replicas serve all three
    finally:
        system.supervisor.stop_child(node)
        system.nodes.remove(node)
    system.wait_healthy_nodes(2)


def billed(stack: Stack, request_ids: list[str]) -> dict[str, int]:
    rows = run_db(
        stack,
        "SELECT request_id, count(*) AS n FROM usage_records WHERE request_id = ANY($1) "
        "GROUP BY request_id",
        request_ids,
    )
    return {r["request_id"]: r["n"] for r in rows}


def test_every_request_is_billed_once_by_its_own_gateway(system: Stack) -> None:
    assert system.demo is not None
    tenant, env = fresh_tenant(system)
    key = key_in(system, tenant, env).plaintext
    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(lambda i: ask(system, i % GATEWAYS, key), range(60)))
    wait_until("every request billed", lambda: len(billed(system, ids)) == len(ids), timeout=20)
    assert set(billed(system, ids).values()) == {1}
    # each gateway's consumer has its own offset, on its own log
    offsets = run_db(system, 'SELECT gateway, path, "offset" FROM access_log_offsets')
    mine = {r["gateway"]: r for r in offsets if r["path"].startswith(str(system.data_dir))}
    assert set(mine) == {g.settings.gateway_id for g in system.gateways}
    for gateway in system.gateways:
        row = mine[gateway.settings.gateway_id]
        assert row["path"] == str(gateway.settings.access_log.resolve())
        assert row["offset"] == gateway.settings.access_log.stat().st_size
    # no gateway's billing took another gateway's live Envoy for a dead one of its own
    boots = run_db(system, "SELECT boot_id, gateway FROM envoy_boots WHERE superseded_at IS NULL")
    live = {g.boot_id: g.settings.gateway_id for g in system.gateways}
    assert {b["boot_id"]: b["gateway"] for b in boots if b["boot_id"] in live} == live


def test_a_killed_envoy_is_reconciled_by_its_own_gateway_alone(
    system: Stack, cluster: Cluster
) -> None:
    tenant, env = fresh_tenant(system)
    key = key_in(system, tenant, env).plaintext
    second = system.gateways[1]
    dead = second.boot_id
    assert dead is not None and second.child is not None
    before = [ask(system, n, key) for n in range(GATEWAYS)]
    second.child.proc.kill()  # the supervisor starts it again, under a new boot id
    wait_until(
        "the second gateway's Envoy back",
        lambda: second.boot_id != dead and http_ok(f"{second.admin_url}/ready"),
        timeout=20,
    )
    after = [ask(system, n, key) for n in range(GATEWAYS)]
    wait_until(
        "the dead boot reconciled",
        lambda: run_db(
            system,
            "SELECT 1 FROM envoy_boots WHERE boot_id = $1 AND reconciled_at IS NOT NULL",
            dead,
        ),
        timeout=20,
    )
    (row,) = run_db(system, "SELECT gateway FROM envoy_boots WHERE boot_id = $1", dead)
    assert row["gateway"] == second.settings.gateway_id
    ids = before + after
    wait_until("every request billed", lambda: len(billed(system, ids)) == len(ids), timeout=20)
    assert set(billed(system, ids).values()) == {1}
    # the other gateways' Envoys stay live in their billing's eyes
    others = [g.boot_id for g in system.gateways if g is not second]
    assert not run_db(
        system,
        "SELECT 1 FROM envoy_boots WHERE boot_id = ANY($1) AND superseded_at IS NOT NULL",
        others,
    )
    # the dead boot's journal is gone from its gateway's set
    key_of_set = boots_key(second.settings.gateway_id)
    with contextlib.closing(cluster.client(cluster.master_of(key_slot(key_of_set)))) as node:
        assert not node.sismember(key_of_set, dead)
    with contextlib.closing(cluster.client(cluster.master_of(key_slot(journal_key(dead))))) as node:
        assert not node.exists(journal_key(dead))


def test_reservations_are_billed_and_settled_in_the_tenants_slot(
    system: Stack, cluster: Cluster
) -> None:
    tenant, env = fresh_tenant(system)
    key = key_in(system, tenant, env)
    set_limit(system, "key", key.api_key_id, tokens_per_minute=2000)
    settled_before = metric(system, SETTLED)
    first = client(system, 1, key.plaintext).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    request_id = first.headers["x-request-id"]
    wait_until("billing to record the request", lambda: billed(system, [request_id]), timeout=15)
    wait_until("the settlement", lambda: metric(system, SETTLED) > settled_before, timeout=15)
    again = client(system, 2, key.plaintext).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert int(again.headers["x-ratelimit-remaining-tokens"]) > 900  # the refund landed
    counter = counter_key(
        layer="key", ident=key.api_key_id, kind="tokens", period_s=60, tenant=tenant
    )
    with contextlib.closing(cluster.client(cluster.master_of(key_slot(counter)))) as node:
        assert node.exists(counter)  # on the master of the tenant's slot


def test_a_failed_over_master_keeps_the_limits_it_held(system: Stack, cluster: Cluster) -> None:
    # last in the module: it kills a master (its replica takes over; the cluster is whole
    # again, one master short of a replica)
    tenant, env = fresh_tenant(system)
    key = key_in(system, tenant, env)
    set_limit(system, "key", key.api_key_id, requests_per_minute=20)
    assert burst(system, [key.plaintext], 10).count(200) == 10
    spent_at = time.monotonic()
    counter = counter_key(
        layer="key", ident=key.api_key_id, kind="requests", period_s=60, tenant=tenant
    )
    master = cluster.master_of(key_slot(counter))
    with contextlib.closing(cluster.client(master)) as node:
        # Redis replicates asynchronously: what it had not sent its replica when it died
        # would be lost (the README's bound); here it has, so nothing may be
        node.execute_command("WAIT", 1, 2000)
    cluster.kill(master)
    # meanwhile the layers fail open (the default): requests pass or are limited in
    # process, never an error
    during: list[int] = []
    deadline = time.monotonic() + 30
    while cluster.master_of(key_slot(counter)) == master or not cluster.healthy():
        assert time.monotonic() < deadline, "the replica never took over"
        during += burst(system, [key_in(system, tenant, env).plaintext], 3)
        time.sleep(0.3)
    assert set(during) <= {200, 429}
    time.sleep(1.5)  # every rate-limit process past its second of deciding alone
    # After the failover the counter is the one the dead master held: ten more, not twenty,
    # plus what the limit refilled meanwhile (GCRA: one request per 3 s at 20 a minute).
    refilled = int((time.monotonic() - spent_at) / 3) + 1
    admitted = burst(system, [key.plaintext], 20).count(200)
    assert 10 <= admitted <= 10 + refilled < 20
