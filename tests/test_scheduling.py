"""Scheduling strategies and regions through the real Envoy, with the openai SDK: four
simulated nodes in two regions, the model's strategy changed live.

Tolerances (sequential requests, so Envoy's own in-flight counts are all zero):
round robin: each of 4 nodes gets 10 to 20 of 60; random: each gets at least 4 of 80
(expected 20); least-loaded: a node holding 8 requests gets at most 10 % of 60 (expected
about 2 %); health-weighted: that node gets fewer than any healthy one and at most 20 %
(expected about 11 %); prefix affinity: every repeat of a prefix lands on one node and 20
distinct prefixes reach at least 3 of the 4 nodes.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from crosslogic.stack import Stack
from tests.support.admin import Admin, ok
from tests.support.system import MODEL, own_system
from tests.support.tenants import demo_key
from tests.support.waiting import wait_until

EU, US = "eu-west", "us-east"
NODES = {"eu-1": EU, "eu-2": EU, "us-1": US, "us-2": US}
BUSY = "eu-1"  # holds slow requests in the load tests: 8 of its 10 sequence slots
# every node paces 1,000 tokens/s: the test's one-token requests take no time, while a
# request for 20,000 tokens holds a slot for 20 s
PACE = ("--tokens-per-second", "1000")
RPM = 1_000_000


class Fleet:
    """The system, its admin API, the model's id and each node's address."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.admin = Admin(stack)
        self.model_id = int(ok(self.admin("GET", f"/admin/models/{MODEL}"))["id"])
        self.urls: dict[str, str] = {}
        self.key = ""  # the fleet's key: above the demo key's rate limit
        self.frozen: set[str] = set()  # SIGSTOPped: they answer nothing, /metrics included

    def start_node(self, node_id: str) -> None:
        extra = ("--region", NODES[node_id], *PACE)
        if node_id == BUSY:
            extra += ("--max-num-seqs", "10")
        self.stack.start_node(node_id, extra=extra)

    def stop_node(self, node_id: str) -> None:
        child = next(c for c in self.stack.nodes if c.name == f"node-{node_id}")
        self.stack.supervisor.stop_child(child)  # SIGTERM: the node deregisters
        self.stack.nodes.remove(child)
        self.urls.pop(node_id, None)

    def freeze(self, node_id: str, *, frozen: bool) -> None:
        """SIGSTOP a node (it keeps its registry entry: heartbeats outlive the test, but
        answers nothing, so Envoy's health checks fail), or SIGCONT it."""
        child = next(c for c in self.stack.nodes if c.name == f"node-{node_id}")
        child.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
        (self.frozen.add if frozen else self.frozen.discard)(node_id)

    def learn_urls(self) -> None:
        listed = ok(self.admin("GET", "/admin/nodes"))["nodes"]
        self.urls = {
            n["id"]: f"http://{n['address']}:{n['port']}"
            for n in listed
            if n["live"] and n["id"] in NODES
        }

    def served(self) -> Counter[str]:
        """Chat requests each live node answered so far."""
        counts: Counter[str] = Counter()
        for node_id, url in self.urls.items():
            if node_id in self.frozen:
                continue
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
                text = r.read().decode()
            for labels, value in re.findall(
                r"^crosslogic_node_requests_total\{([^}]*)\} (\S+)$", text, re.M
            ):
                if 'endpoint="chat"' in labels:
                    counts[node_id] += int(float(value))
        return counts

    def split(self, send: Callable[[], object], times: int) -> Counter[str]:
        before = self.served()
        for _ in range(times):
            send()
        after = self.served()
        return Counter({n: after[n] - before[n] for n in after if after[n] - before[n]})

    def envoy(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.stack.envoy_admin_url}{path}", timeout=5) as r:
            return json.load(r)

    def policy(self, cluster: str) -> str | None:
        for config in self.envoy("/config_dump?resource=dynamic_active_clusters")["configs"]:
            if config["cluster"]["name"] == cluster:
                return str(config["cluster"].get("lb_policy", "ROUND_ROBIN"))
        return None

    def hosts(self, cluster: str) -> dict[str, dict[str, Any]]:
        """Envoy's view of a cluster's hosts by node id: weight, priority, health."""
        for status in self.envoy("/clusters?format=json").get("cluster_statuses", []):
            if status["name"] == cluster:
                return {h["hostname"]: h for h in status.get("host_statuses", [])}
        return {}

    def healthy(self, cluster: str) -> set[str]:
        """The hosts Envoy would send a request to: no failed or pending check, not draining."""
        healthy = set()
        for node, host in self.hosts(cluster).items():
            health = host.get("health_status", {})
            flags = {k for k, v in health.items() if v is True}
            if health.get("eds_health_status", "UNKNOWN") in ("HEALTHY", "UNKNOWN") and not flags:
                healthy.add(node)
        return healthy

    def set_strategy(self, strategy: str) -> None:
        ok(self.admin("PATCH", f"/admin/models/{MODEL}", {"lb_strategy": strategy}))
        expected = {
            "least_loaded": "LEAST_REQUEST",
            "round_robin": "ROUND_ROBIN",
            "health_weighted": "ROUND_ROBIN",
            "random": "RANDOM",
            "prefix_affinity": "MAGLEV",
        }[strategy]
        cluster = f"model_{self.model_id}"
        wait_until(
            f"Envoy to balance {cluster} with {expected}",
            lambda: (
                self.policy(cluster) == expected and len(self.healthy(cluster)) == len(self.urls)
            ),
            timeout=20,
        )


@pytest.fixture(scope="module", params=["grpc", "http"])
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    # heartbeats outlive a frozen node here: Envoy's health checks alone take it out
    # (the placement is ext_authz's: each test runs over both of its protocols)
    with own_system(nodes=0, node_heartbeat_timeout=60.0, extauthz_protocol=request.param) as stack:
        fleet = Fleet(stack)
        for code in (EU, US):
            ok(fleet.admin("POST", "/admin/regions", {"code": code, "name": code}))
        for node_id in NODES:
            fleet.start_node(node_id)
        for code in (EU, US):
            cluster = f"model_{fleet.model_id}_only_{code}"
            wait_until(
                f"2 healthy nodes in {cluster}",
                lambda c=cluster: len(fleet.healthy(c)) == 2,  # type: ignore[misc]
                timeout=30,
                check=stack.supervisor.check,
            )
        fleet.learn_urls()
        fleet.key = demo_key(stack, rate_limit_rpm=RPM).plaintext
        yield fleet


def sdk(fleet: Fleet, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=fleet.stack.base_url,
        api_key=key or fleet.key,
        max_retries=0,
        timeout=10,
        default_headers=headers,
    )


def one_token(client: openai.OpenAI, text: str = "x") -> str | None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=1
    )
    return reply.choices[0].message.content


def test_round_robin_spreads_evenly(fleet: Fleet) -> None:
    fleet.set_strategy("round_robin")
    client = sdk(fleet)
    split = fleet.split(lambda: one_token(client), 60)
    assert set(split) == set(NODES) and all(10 <= n <= 20 for n in split.values()), split


def test_random_reaches_every_node(fleet: Fleet) -> None:
    fleet.set_strategy("random")
    client = sdk(fleet)
    split = fleet.split(lambda: one_token(client), 80)
    assert set(split) == set(NODES) and min(split.values()) >= 4, split


def test_prefix_affinity_keeps_a_prefix_on_one_node_and_spreads_prefixes(fleet: Fleet) -> None:
    fleet.set_strategy("prefix_affinity")
    client = sdk(fleet)
    # ext_authz re-reads the catalog every 2 s: until then the prefix is not hashed
    wait_until(
        "a repeated prefix to stick to one node",
        lambda: len(fleet.split(lambda: one_token(client, "warm " * 60), 6)) == 1,
        timeout=15,
    )
    used = set()
    for i in range(20):
        prefix = f"document {i}: " + "lorem ipsum " * 25
        split = fleet.split(lambda p=prefix: one_token(client, p + "question?"), 3)  # type: ignore[misc]
        assert len(split) == 1 and sum(split.values()) == 3, (i, split)
        used |= set(split)
    assert len(used) >= 3, used


def hold(fleet: Fleet, node_id: str, count: int) -> list[threading.Thread]:
    """``count`` requests straight to a node (not through Envoy, as another Envoy would
    send them), each holding a sequence slot for 20 s."""
    url = fleet.urls[node_id] + "/v1/chat/completions"
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 20_000}
    ).encode()

    def call() -> None:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
        except (urllib.error.URLError, OSError):
            pass  # the node was stopped: the system is going away

    threads = [threading.Thread(target=call, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_load_strategies_follow_the_load_nodes_report(fleet: Fleet) -> None:
    fleet.set_strategy("least_loaded")
    cluster = f"model_{fleet.model_id}"
    client = sdk(fleet)
    hold(fleet, BUSY, 8)
    # heartbeat (0.5 s) -> xDS poll (0.5 s) -> EDS weight: 1000 * (1 - 0.4) / 9 = 67
    wait_until(
        "the busy node's least-loaded weight",
        lambda: fleet.hosts(cluster).get(BUSY, {}).get("weight", 1000) < 200,
        timeout=10,
    )
    split = fleet.split(lambda: one_token(client), 60)
    others = [split[n] for n in NODES if n != BUSY]
    assert split[BUSY] <= 6 and min(others) >= 10, split
    fleet.set_strategy("health_weighted")
    # KV cache 80 % used: health 0.36, weight 360 against 1,000
    wait_until(
        "the busy node's health weight",
        lambda: 200 < fleet.hosts(cluster).get(BUSY, {}).get("weight", 1000) < 500,
        timeout=10,
    )
    split = fleet.split(lambda: one_token(client), 60)
    others = [split[n] for n in NODES if n != BUSY]
    assert split[BUSY] < min(others) and split[BUSY] <= 12, split


def answered(client: openai.OpenAI) -> bool:
    try:
        one_token(client)
    except openai.APITimeoutError:
        return False
    return True


def knows(fleet: Fleet, region: str) -> bool:
    try:
        one_token(sdk(fleet, **{"crosslogic-region": region}))
    except openai.BadRequestError:
        return False  # region_not_found: ext_authz has not re-read the regions yet
    return True


def eu_healthy(fleet: Fleet) -> bool:
    """Both EU nodes healthy in the strict and in the preferred cluster: each cluster
    health-checks its hosts on its own."""
    eu = {"eu-1", "eu-2"}
    return eu <= fleet.healthy(f"model_{fleet.model_id}_only_{EU}") and eu <= fleet.healthy(
        f"model_{fleet.model_id}_in_{EU}"
    )


def test_regions_preferred_strict_and_failover(fleet: Fleet) -> None:
    stack = fleet.stack
    fleet.set_strategy("least_loaded")
    eu_only = demo_key(stack, allowed_regions=[EU], rate_limit_rpm=RPM).plaintext
    us_only = demo_key(stack, allowed_regions=[US], rate_limit_rpm=RPM).plaintext
    # ext_authz learns the new regions within its 2 s catalog refresh
    wait_until("ext_authz to know the regions", lambda: knows(fleet, EU), timeout=10)
    prefer_eu = sdk(fleet, **{"crosslogic-region": EU})
    assert set(fleet.split(lambda: one_token(prefer_eu), 20)) <= {"eu-1", "eu-2"}
    prefer_us = sdk(fleet, **{"crosslogic-region": "US-EAST"})
    assert set(fleet.split(lambda: one_token(prefer_us), 20)) <= {"us-1", "us-2"}
    strict_eu = sdk(fleet, eu_only)
    assert set(fleet.split(lambda: one_token(strict_eu), 20)) <= {"eu-1", "eu-2"}
    with pytest.raises(openai.PermissionDeniedError) as refused:
        one_token(sdk(fleet, eu_only, **{"crosslogic-region": US}))
    assert refused.value.code == "region_not_allowed"
    with pytest.raises(openai.BadRequestError) as unknown:
        one_token(sdk(fleet, **{"crosslogic-region": "mars"}))
    assert unknown.value.code == "region_not_found"
    assert [m.id for m in sdk(fleet, eu_only).models.list()] == [MODEL]
    # a key's default region: preferred when the request names none; checked when set
    assert stack.demo is not None
    keys = f"/admin/environments/{stack.demo.environment_id}/keys"
    for spec in ({"default_region": "mars"}, {"allowed_regions": [EU], "default_region": US}):
        status, body = fleet.admin("POST", keys, spec)
        assert (status, body["error"]["param"]) == (400, "default_region"), body
    default_us = demo_key(stack, default_region=US, rate_limit_rpm=RPM).plaintext
    assert set(fleet.split(lambda: one_token(sdk(fleet, default_us)), 10)) <= {"us-1", "us-2"}
    both = demo_key(stack, allowed_regions=[EU, US], default_region=US, rate_limit_rpm=RPM)
    assert set(fleet.split(lambda: one_token(sdk(fleet, both.plaintext)), 10)) <= {"us-1", "us-2"}

    # the EU nodes stop answering (still registered): health checks fail, preference fails
    # over to the US, a strict key gets a 503 at once
    try:
        for node_id in ("eu-1", "eu-2"):
            fleet.freeze(node_id, frozen=True)
        wait_until(
            "Envoy to find the EU nodes unhealthy",
            lambda: fleet.healthy(f"model_{fleet.model_id}_in_{EU}") == {"us-1", "us-2"},
            timeout=15,
        )
        # /clusters shows the failed check a moment before every worker acts on it (seen:
        # the first request then still went to a frozen node): wait for one answer
        impatient = sdk(fleet, **{"crosslogic-region": EU}).with_options(timeout=2)
        wait_until("a request preferring the EU to be answered", lambda: answered(impatient))
        assert set(fleet.split(lambda: one_token(prefer_eu), 10)) == {"us-1", "us-2"}
        before = fleet.served()
        for _ in range(5):
            with pytest.raises(openai.InternalServerError) as unhealthy:
                one_token(strict_eu)
            assert unhealthy.value.code == "no_healthy_upstream"
        assert fleet.served() == before
    finally:
        for node_id in ("eu-1", "eu-2"):
            fleet.freeze(node_id, frozen=False)
    wait_until("the EU nodes to be healthy again", lambda: eu_healthy(fleet), timeout=15)
    # healthy in /clusters a moment before its load balancer gives priority 0 the traffic
    wait_until(
        "a preferring key served in the EU again",
        lambda: set(fleet.split(lambda: one_token(prefer_eu), 1)) <= {"eu-1", "eu-2"},
        timeout=10,
    )
    assert set(fleet.split(lambda: one_token(prefer_eu), 10)) <= {"eu-1", "eu-2"}

    # the EU region loses every node: preference fails over, a strict key gets a 503
    for node_id in ("eu-1", "eu-2"):
        fleet.stop_node(node_id)
    wait_until(
        "the EU nodes to leave Envoy",
        lambda: not fleet.hosts(f"model_{fleet.model_id}_only_{EU}"),
        timeout=15,
    )
    assert set(fleet.split(lambda: one_token(prefer_eu), 10)) == {"us-1", "us-2"}
    before = fleet.served()
    for _ in range(10):
        with pytest.raises(openai.InternalServerError) as unavailable:
            one_token(strict_eu)
        assert unavailable.value.status_code == 503
        assert unavailable.value.code == "no_healthy_upstream"
    assert fleet.served() == before  # never served outside its region
    assert [m.id for m in sdk(fleet, eu_only).models.list()] == []
    assert [m.id for m in sdk(fleet, us_only).models.list()] == [MODEL]
    with pytest.raises(openai.InternalServerError) as retrieve:
        sdk(fleet, eu_only).models.retrieve(MODEL)
    assert retrieve.value.code == "no_healthy_upstream"

    # the region comes back: it is preferred again
    for node_id in ("eu-1", "eu-2"):
        fleet.start_node(node_id)
    wait_until(
        "the EU nodes to be back",
        lambda: eu_healthy(fleet),
        timeout=20,
        check=stack.supervisor.check,
    )
    fleet.learn_urls()
    # healthy in /clusters a moment before its load balancer gives priority 0 the traffic
    wait_until(
        "a preferring key served in the EU again",
        lambda: set(fleet.split(lambda: one_token(prefer_eu), 1)) <= {"eu-1", "eu-2"},
        timeout=10,
    )
    assert set(fleet.split(lambda: one_token(prefer_eu), 10)) <= {"eu-1", "eu-2"}
    assert set(fleet.split(lambda: one_token(strict_eu), 10)) <= {"eu-1", "eu-2"}
