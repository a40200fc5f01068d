"""``python -m bench.xds [--nodes N] [--models M] [--apply K]``: the xDS control plane's figures.

1. Snapshot build (pure: models and nodes -> clusters, endpoints, content-hash versions) for
   N nodes across M models (default 1,000 across 50), and the serialized size of what a
   State-of-the-World push sends an Envoy (every cluster; every load assignment), next to
   what one node joining changes (one load assignment: what a Delta push would send).
2. With ``--apply K`` (default 20; 0 skips it): a stack of its own (embedded databases, two
   xDS replicas, one Envoy), K nodes registered one at a time through the admin API (with
   the registration token), and the time from each call to Envoy's ``/clusters`` showing
   it: the registration, a heartbeat whose load changes the node's weight, and an
   operator's drain; then the server side's ``control_plane_config_apply_seconds``.

Figures, not assertions; not run by the tests. ``make bench`` prints part 1 (under a second).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2

from bench.gateway import post_json
from crosslogic.plan import plan
from crosslogic.ports import free_ports, with_free_ports
from crosslogic.settings import Settings
from crosslogic.stack import Stack
from crosslogic.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ModelEntry,
    NodeEntry,
    Snapshot,
    build,
)


def fleet(nodes: int, models: int) -> tuple[list[ModelEntry], list[NodeEntry]]:
    catalog = [ModelEntry(id=m + 1, name=f"org/model-{m + 1}") for m in range(models)]
    entries = [
        NodeEntry(
            id=f"node-{n}",
            model_id=n % models + 1,
            ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            port=8000,
            draining=n % 50 == 0,
        )
        for n in range(nodes)
    ]
    return catalog, entries


def push_bytes(snapshot: Snapshot, type_url: str, names: list[str] | None = None) -> int:
    resources = snapshot.resources[type_url]
    chosen = sorted(resources) if names is None else names
    return discovery_pb2.DiscoveryResponse(
        version_info=snapshot.versions[type_url],
        type_url=type_url,
        nonce="1",
        resources=[resources[name] for name in chosen],
    ).ByteSize()


def build_figures(nodes: int, models: int, *, rounds: int = 20) -> None:
    catalog, entries = fleet(nodes, models)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        snapshot = build(catalog, entries)
        times.append(time.perf_counter() - started)
    assert snapshot.consistent()
    joined = build(catalog, [*entries, NodeEntry(id="late", model_id=1, ip="10.255.0.1", port=1)])
    changed = [
        name
        for name, packed in joined.resources[ENDPOINT_TYPE].items()
        if snapshot.resources[ENDPOINT_TYPE][name] != packed
    ]
    print(f"snapshot build, {nodes:,} nodes across {models} models ({rounds} rounds):")
    print(
        f"  median {statistics.median(times) * 1e3:.1f} ms, "
        f"min {min(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms"
    )
    print("serialized push (State of the World, to one Envoy):")
    print(f"  CDS, every cluster:         {push_bytes(snapshot, CLUSTER_TYPE):>9,} bytes")
    print(f"  EDS, every load assignment: {push_bytes(snapshot, ENDPOINT_TYPE):>9,} bytes")
    print(
        f"one node joins: {len(changed)} load assignment changes, "
        f"{push_bytes(joined, ENDPOINT_TYPE, changed):,} bytes as a Delta push "
        f"(SotW resends {push_bytes(joined, ENDPOINT_TYPE):,})"
    )


def host_lines(stack: Stack, port: int) -> list[str]:
    """Envoy's /clusters lines about the endpoint on ``port`` (every cluster holding it)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/clusters", timeout=5) as r:
        text = r.read().decode()
    return [line for line in text.splitlines() if f"::127.0.0.1:{port}::" in line]


def timed(what: str, act: Callable[[], object], applied: Callable[[], bool]) -> float:
    started = time.perf_counter()
    act()
    while not applied():
        if time.perf_counter() - started > 10:
            raise TimeoutError(f"{what}: not applied by Envoy within 10 s")
        time.sleep(0.002)
    return time.perf_counter() - started


def show(label: str, waits: list[float]) -> None:
    waits = sorted(waits)
    p90 = waits[min(len(waits) - 1, int(len(waits) * 0.9))]
    print(
        f"  {label}: p50 {statistics.median(waits) * 1e3:.0f} ms, p90 {p90 * 1e3:.0f} ms, "
        f"max {waits[-1] * 1e3:.0f} ms ({len(waits)})"
    )


def apply_figures(registrations: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="clx-", dir="/tmp"))
    stack = Stack(plan(with_free_ports(Settings(data_dir=data_dir))), nodes=1)
    try:
        print(f"\nstarting a stack of its own ({stack.settings.xds_replicas} xDS replicas)...")
        stack.start()
        admin, api = stack.settings.admin_token, f"{stack.admin_url}/admin/nodes"
        joined, weighed, drained = [], [], []
        # never listened on: Envoy has each in EDS at once, health checks fail it later
        for n, port in enumerate(free_ports(registrations)):
            body = {"node_id": f"bench-xds-{n}", "model": stack.model}
            body |= {"address": "127.0.0.1", "port": port}
            node: dict[str, object] = {}

            def register(body: dict[str, object] = body, node: dict[str, object] = node) -> None:
                node |= post_json(
                    f"{api}/register", body, token=stack.settings.node_registration_token
                )

            joined.append(
                timed("registration", register, lambda p=port: bool(host_lines(stack, p)))
            )
            node_id, credential = str(node["node_id"]), str(node["node_credential"])
            # a busy node: least-loaded weight 1000 -> 48 (xDS reads load at its next poll,
            # at most XDS_POLL_INTERVAL later, and changes weights at most once a second)
            weighed.append(
                timed(
                    "weight change",
                    lambda i=node_id, c=credential: post_json(
                        f"{api}/{i}/heartbeat", {"requests_running": 20}, token=c
                    ),
                    lambda p=port: any("::weight::48" in line for line in host_lines(stack, p)),
                )
            )
            drained.append(
                timed(
                    "drain",
                    lambda i=node_id: post_json(f"{api}/{i}/drain", {}, token=admin),
                    lambda p=port: any(
                        "health_flags" in line and "drain" in line.lower()
                        for line in host_lines(stack, p)
                    ),
                )
            )
        print("call sent -> applied in Envoy's /clusters:")
        show("registration (node in EDS)", joined)
        show("weight change (heartbeat with load -> new weight)", weighed)
        show("drain (operator's call -> DRAINING)", drained)
        url = f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        count = re.search(
            r'^control_plane_config_apply_seconds_count\{type="eds"\} (\S+)$', text, re.M
        )
        total = re.search(
            r'^control_plane_config_apply_seconds_sum\{type="eds"\} (\S+)$', text, re.M
        )
        if count and total and float(count.group(1)):
            mean = float(total.group(1)) / float(count.group(1))
            print(
                f"server side, noticed change -> Envoy's ACK (EDS): mean {mean * 1e3:.1f} ms "
                f"over {float(count.group(1)):.0f} pushes"
            )
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--apply", type=int, default=20, help="registrations to time (0: none)")
    args = parser.parse_args(argv)
    build_figures(args.nodes, args.models)
    if args.apply > 0:
        apply_figures(args.apply)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
