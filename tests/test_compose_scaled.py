"""docker-compose.scaled.yml's own shape: the control plane replicated without billing, three
gateways each with its own billing, a Redis Cluster formed once, and a PostgreSQL connection
budget (written in the file's comments) that the settings it sets really compute. What both
compose files must satisfy is in test_compose.py (which covers this file too).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Any

import pytest

from crosslogic.db.budget import budget
from tests.support.compose import (
    command,
    crosslogic_services,
    depends_on,
    environment,
    gateways,
    is_node,
    model,
    mounts,
    one_shot_jobs,
    only_invocation,
    parse_invocation,
    settings_of,
)
from tests.support.dockerfile import REPO

SCALED = REPO / "docker-compose.scaled.yml"
GATEWAY_IDS = ("gateway-1", "gateway-2", "gateway-3")
REDIS_NODES = tuple(f"redis-{n}" for n in range(1, 7))
RESERVED = 3  # PostgreSQL's superuser_reserved_connections, by default
Services = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return model(SCALED)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def redis_servers(services: Services) -> dict[str, int]:
    """Redis node service -> its port."""
    found = {}
    for name, service in services.items():
        argv = command(service)
        if argv[:1] == ["redis-server"]:
            found[name] = int(argv[argv.index("--port") + 1]) if "--port" in argv else 6379
    return found


def redis_clients(services: Services) -> Services:
    """The crosslogic services that use Redis (all but the nodes and the one-shot jobs)."""
    return {
        name: service
        for name, service in crosslogic_services(services).items()
        if not is_node(service) and name not in one_shot_jobs(services)
    }


def test_the_scaled_shape(services: Services) -> None:
    per_gateway = {
        f"{g}-{role}" for g in GATEWAY_IDS for role in ("envoy-config", "envoy", "billing")
    }
    expected = {
        "postgres",
        *REDIS_NODES,
        "redis-cluster",
        "migrate",
        "certificates",
        "control-plane",
    }
    assert set(services) == expected | per_gateway | {"node-1", "node-2"}
    assert services["postgres"]["image"] == "postgres:16"
    assert {services[n]["image"] for n in (*REDIS_NODES, "redis-cluster")} == {"redis:7"}
    assert services["control-plane"]["deploy"]["replicas"] >= 2
    found = gateways(services)
    assert [settings_of(services[g.config]).gateway_id for g in found] == list(GATEWAY_IDS)
    for gateway, gateway_id in zip(found, GATEWAY_IDS, strict=True):
        # named after its gateway, so an operator sees which containers go together
        assert (gateway.config, gateway.envoy, gateway.billing) == (
            f"{gateway_id}-envoy-config",
            f"{gateway_id}-envoy",
            f"{gateway_id}-billing",
        )
    assert one_shot_jobs(services) == {"migrate", "redis-cluster", "certificates"} | {
        g.config for g in found
    }


def test_the_control_plane_runs_every_service_but_billing(services: Services) -> None:
    service = services["control-plane"]
    argv = only_invocation(service)
    assert argv[1] == "serve" and parse_invocation(argv).without == ["billing"]
    env = environment(service)
    # billing runs beside each gateway: nothing here reads a log or asks an Envoy
    assert not {"ACCESS_LOG_PATH", "ENVOY_ADMIN_HOST", "GATEWAY_ID"} & set(env)
    # only the CA, shared by its replicas (xDS issues Envoy's client certificate from it)
    assert mounts(service) == {"/var/lib/crosslogic/tls": "tls-ca"}
    for gateway in gateways(services):
        argv = only_invocation(services[gateway.billing])
        assert argv[1] == "service" and parse_invocation(argv).name == "billing"
        assert depends_on(services[gateway.billing]) == {
            "migrate": "service_completed_successfully",
            "redis-cluster": "service_completed_successfully",
        }
        # run on its own, it serves its own /metrics (the access-log lag): reachable
        billing = settings_of(services[gateway.billing])
        assert (billing.server_host, billing.prometheus_port) == ("0.0.0.0", 9090)


def test_every_redis_client_knows_every_cluster_node(services: Services) -> None:
    nodes = redis_servers(services)
    assert set(nodes) == set(REDIS_NODES)
    clients = redis_clients(services)
    assert {"control-plane", *(g.billing for g in gateways(services))} <= set(clients)
    for name, service in clients.items():
        s = settings_of(service)
        assert s.redis_host is None, f"{name}: REDIS_CLUSTER replaces REDIS_HOST"
        seeds = set(s.redis_cluster.split(","))
        assert seeds == {f"{node}:{port}" for node, port in nodes.items()}, name
        assert depends_on(service)["redis-cluster"] == "service_completed_successfully"


def test_cluster_nodes_keep_their_identity_and_address(
    services: Services, compose: dict[str, Any]
) -> None:
    (ipam,) = compose["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    addresses = []
    for name in REDIS_NODES:
        node = services[name]
        argv = command(node)
        assert argv[argv.index("--cluster-enabled") + 1] == "yes"
        # nodes.conf is relative to the working directory, the image's /data: the volume
        assert "/" not in argv[argv.index("--cluster-config-file") + 1]
        assert mounts(node)["/data"] == f"{name}-data"
        # the cluster bus knows peers by address: fixed ones, outside the dynamic range
        address = ipaddress.ip_address(node["networks"]["default"]["ipv4_address"])
        assert address in subnet and address not in dynamic and address != subnet[1], name
        addresses.append(address)
    assert len(set(addresses)) == len(addresses)


def test_the_cluster_is_formed_once(services: Services) -> None:
    job = services["redis-cluster"]
    assert job["restart"] == "no"
    assert depends_on(job) == dict.fromkeys(REDIS_NODES, "service_healthy")
    argv = command(job)
    assert argv[:2] == ["sh", "-c"]
    words = shlex.split(argv[2].replace(";", " ; "))
    # only where no slot is assigned yet: a later `up` finds the cluster formed
    guard = words.index("if")
    assert words[guard + 1 : guard + 5] == ["redis-cli", "-h", REDIS_NODES[0], "cluster"]
    assert "^cluster_slots_assigned:0" in words[guard : words.index("then")]
    create = words.index("--cluster") - 1
    assert words[create : create + 3] == ["redis-cli", "--cluster", "create"]
    end = words.index(";", create)
    created = words[create + 3 : end]
    options = [w for w in created if w.startswith("--")]
    assert options == ["--cluster-replicas", "--cluster-yes"]
    replicas = int(created[created.index("--cluster-replicas") + 1])
    targets = [w for w in created if ":" in w]
    assert targets == [f"{n}:{p}" for n, p in redis_servers(services).items()]
    # three masters, each with a replica to take over when it dies
    assert replicas == 1 and len(targets) // (1 + replicas) == 3
    # and the job ends only once the cluster serves
    assert "^cluster_state:ok" in words[words.index("until") :]


# --- the PostgreSQL connection budget --------------------------------------------------------

Term = tuple[int, int, int]  # processes x (pool + dedicated connections)


def holders(service: dict[str, Any]) -> list[Term]:
    """What one container of ``service`` holds on the primary, service by service, as
    crosslogic.db.budget counts it: `serve --without ...` runs the others in as many
    processes as its settings give them, `service NAME` one process of NAME."""
    argv = only_invocation(service)
    args = parse_invocation(argv)
    found = budget(settings_of(service), without=getattr(args, "without", ()))
    counted = [
        (1 if argv[1] == "service" else s.processes, s.pool(), s.dedicated())
        for s in found.services
        if argv[1] != "service" or s.service == args.name
    ]
    return [term for term in counted if term[0]]


def connections(terms: list[Term]) -> int:
    return sum(processes * (pool + dedicated) for processes, pool, dedicated in terms)


def stated(pattern: str) -> tuple[str, ...]:
    """The groups of the one comment line of the file matching ``pattern``; every
    arithmetic ``= EXPR = N`` in it must hold."""
    (line,) = [line for line in SCALED.read_text().splitlines() if re.search(pattern, line)]
    match = re.search(pattern, line)
    assert match, line
    for expr, value in re.findall(r"= ([\d x()+]+) = (\d+)", line):
        assert eval(expr.replace("x", "*"), {"__builtins__": {}}) == int(value), line
    return match.groups()


def written_terms(expr: str) -> list[Term]:
    """``2 x 5 + 2 x (4 + 1)`` -> [(2, 5, 0), (2, 4, 1)]."""
    found = re.findall(r"(\d+) x (?:\((\d+) \+ (\d+)\)|(\d+))", expr)
    return [
        (int(n), int(pool or alone), int(dedicated or 0)) for n, pool, dedicated, alone in found
    ]


def test_the_documented_connection_budget_is_what_the_settings_hold(services: Services) -> None:
    expr, per_replica = stated(r"control-plane, per replica = ([\d x()+]+) = (\d+)$")
    computed = holders(services["control-plane"])
    assert sorted(written_terms(expr)) == sorted(computed)
    assert int(per_replica) == connections(computed)
    expr, per_gateway = stated(r"billing, per gateway = ([\d x()+]+) = (\d+)$")
    found = gateways(services)
    for gateway in found:
        computed = holders(services[gateway.billing])
        assert written_terms(expr) == computed and int(per_gateway) == connections(computed)
    replicas = services["control-plane"]["deploy"]["replicas"]
    expected = replicas * int(per_replica) + len(found) * int(per_gateway)
    (total,) = stated(r"total = [\d x()+]+ = (\d+)$")
    assert int(total) == expected
    assert stated(r"A third replica adds (\d+), a fourth gateway (\d+)") == (
        per_replica,
        per_gateway,
    )


def test_postgres_holds_the_budget_and_room_for_commands(services: Services) -> None:
    argv = command(services["postgres"])
    settings = dict(argv[i + 1].split("=", 1) for i, word in enumerate(argv) if word == "-c")
    assert "superuser_reserved_connections" not in settings
    most = int(settings["max_connections"])
    written, reserved, commands = map(
        int, stated(r"max_connections (\d+): (\d+) reserved for superusers, (\d+) for commands")
    )
    total = int(stated(r"total = [\d x()+]+ = (\d+)$")[0])
    assert (written, reserved) == (most, RESERVED)
    assert commands == most - RESERVED - total
    # migrate and a few operator commands (one connection each) at the same time
    assert commands >= 5
