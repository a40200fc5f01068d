"""A whole system on a Redis Cluster of three masters (REDIS_CLUSTER): limits exact through
Envoy for each layer and for the global layer shared by two rate-limit processes, and
reservations billed and settled, every counter in its tenant's slot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from crosslogic.contracts.counters import counter_key
from crosslogic.redis_cluster import key_slot
from crosslogic.stack import Stack
from tests.support.db import run_db
from tests.support.metrics import metric
from tests.support.ratelimits import notify_and_wait, set_limit
from tests.support.redis_servers import Cluster, running_cluster
from tests.support.system import MODEL, own_system
from tests.support.tenants import fresh_tenant, key_in
from tests.support.waiting import wait_until

SETTLED = 'crosslogic_billing_token_settlements_total{result="ok"}'


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(replicas=0) as running:
        yield running


@pytest.fixture(scope="module")
def system(cluster: Cluster) -> Iterator[Stack]:
    with own_system(nodes=1, redis_cluster=cluster.seeds) as running:
        assert running.redis is None  # no embedded Redis beside the cluster
        yield running


def burst(stack: Stack, keys: list[str], count: int) -> list[int]:
    def one(i: int) -> int:
        client = openai.OpenAI(base_url=stack.base_url, api_key=keys[i % len(keys)], max_retries=0)
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
            return 200
        except openai.APIStatusError as exc:
            assert exc.status_code == 429, (exc.status_code, exc.response.text)
            return 429

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("layer", ["key", "environment", "tenant"])
def test_each_layer_is_exact_through_envoy(system: Stack, layer: str) -> None:
    tenant, env = fresh_tenant(system)
    keys = [key_in(system, tenant, env) for _ in range(3)]
    subject = {"tenant": tenant, "environment": env, "key": keys[0].api_key_id}[layer]
    plaintexts = [k.plaintext for k in (keys[:1] if layer == "key" else keys)]
    set_limit(system, layer, subject, requests_per_minute=10)
    statuses = burst(system, plaintexts, 30)
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_the_global_layer_is_one_limit_across_rate_limit_processes(system: Stack) -> None:
    tenant, env = fresh_tenant(system)
    keys = [key_in(system, tenant, env).plaintext for _ in range(4)]
    try:
        set_limit(system, "global", "", requests_per_minute=12)
        assert burst(system, keys, 40).count(200) == 12  # two processes, leases from one key
    finally:
        run_db(system, "DELETE FROM rate_limits WHERE scope = 'global'")
        notify_and_wait(system)


def test_reservations_are_billed_and_settled(system: Stack, cluster: Cluster) -> None:
    tenant, env = fresh_tenant(system)
    key = key_in(system, tenant, env)
    set_limit(system, "key", key.api_key_id, tokens_per_minute=2000)
    client = openai.OpenAI(base_url=system.base_url, api_key=key.plaintext, max_retries=0)
    settled_before = metric(system, SETTLED)
    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    request_id = first.headers["x-request-id"]
    wait_until(
        "billing to record the request",
        lambda: run_db(system, "SELECT 1 FROM usage_records WHERE request_id = $1", request_id),
        timeout=15,
    )
    wait_until("the settlement", lambda: metric(system, SETTLED) > settled_before, timeout=15)
    again = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert int(again.headers["x-ratelimit-remaining-tokens"]) > 900  # the refund landed
    counter = counter_key(
        layer="key", ident=key.api_key_id, kind="tokens", period_s=60, tenant=tenant
    )
    with contextlib.closing(cluster.client(cluster.master_of(key_slot(counter)))) as node:
        assert node.exists(counter)  # on the master of the tenant's slot
