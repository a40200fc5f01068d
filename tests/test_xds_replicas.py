"""Replicated xDS through the real Envoy: both servers serve the same versions, Envoy keeps
receiving updates when the one holding its ADS stream is killed, and the xDS metrics are
exported (pushes, NACKs, the apply time, the fleet by model, region and state)."""

from __future__ import annotations

import json
import queue
import re
import time
import urllib.request
from collections.abc import Iterator

import grpc
import openai
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from crosslogic.stack import Stack
from crosslogic.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE
from tests.support.metrics import node_generated_tokens
from tests.support.system import MODEL, outage, own_system
from tests.support.waiting import wait_until

LATE = "late-xds"


def ads_versions(port: int) -> tuple[str, str]:
    """The CDS and EDS versions the xDS server on ``port`` sends a new Envoy."""
    asked: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (request := asked.get(timeout=10)) is not None:
            yield request

    node = base_pb2.Node(id="test-probe", cluster="test")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests(), timeout=10
        )
        asked.put(discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE, node=node))
        clusters = next(stream)
        # no names: no resources, but the version covers every cluster's endpoints
        asked.put(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT_TYPE, node=node))
        endpoints = next(stream)
        asked.put(None)
        stream.cancel()
    return clusters.version_info, endpoints.version_info


def ads_port(stack: Stack) -> int | None:
    """The port of the xDS server holding Envoy's ADS stream (None: no stream now)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/clusters", timeout=5) as r:
        text = r.read().decode()
    for port, active in re.findall(r"^xds::[^:]+:(\d+)::cx_active::(\d+)$", text, re.M):
        if int(active) > 0:
            return int(port)
    return None


def envoy_stats(stack: Stack, *names: str) -> dict[str, int]:
    """Envoy's counters and gauges by full name (0 for one Envoy does not have)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/stats?format=json", timeout=5) as r:
        stats = {s["name"]: s.get("value") for s in json.load(r)["stats"] if "name" in s}
    return {name: int(stats.get(name) or 0) for name in names}


def metrics_text(stack: Stack) -> str:
    url = f"http://127.0.0.1:{stack.settings.prometheus_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_with_one_of_two_xds_servers_killed_a_new_node_gets_traffic() -> None:
    with own_system(nodes=1) as stack:
        first, second = stack.settings.xds_ports
        # one registry, one view: the same content-hash versions from either server (once
        # both have read the registry's last change: each follows it on its own, within its
        # poll), so a stream that moves to the other one is sent nothing new
        wait_until(
            "both xDS servers to serve the same versions",
            lambda: ads_versions(first) == ads_versions(second),
            timeout=10,
        )

        connected = wait_until("Envoy's ADS stream", lambda: ads_port(stack))
        unchanged = (
            "cluster_manager.cluster_added",
            "cluster_manager.cluster_modified",
            f"cluster.model_{MODEL}.membership_change",
        )
        before = envoy_stats(stack, "cluster_manager.cds.update_success", *unchanged)
        holder = next(
            c
            for c in stack.supervisor.children
            if c.name == f"xds-{stack.settings.xds_ports.index(connected) + 1}"
        )
        outage(stack, holder)  # SIGKILL, and not restarted
        other = wait_until(
            "Envoy's ADS stream on the other xDS server",
            lambda: (port := ads_port(stack)) not in (None, connected) and port,
            timeout=15,
        )
        assert other in (first, second)
        # the other server sends the same versions: Envoy takes them and changes nothing
        wait_until(
            "Envoy to take the other server's snapshot",
            lambda: (
                envoy_stats(stack, "cluster_manager.cds.update_success")[
                    "cluster_manager.cds.update_success"
                ]
                > before["cluster_manager.cds.update_success"]
            ),
            timeout=10,
        )
        after = envoy_stats(stack, *unchanged)
        assert after == {name: before[name] for name in unchanged}
        pushes_before = sample(metrics_text(stack), 'crosslogic_xds_pushes_total{type="eds"}')

        started = time.monotonic()
        stack.start_node(LATE)
        stack.wait_healthy_nodes(2, timeout=15)
        assert stack.demo is not None
        client = openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)
        while node_generated_tokens(stack).get(LATE, 0) == 0:
            assert time.monotonic() - started < 20, "the new node got no traffic within 20 s"
            for _ in range(10):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
                )

        def timed() -> str | None:
            text = metrics_text(stack)
            return (
                text
                if sample(text, 'control_plane_config_apply_seconds_count{type="eds"}')
                else None
            )

        text = wait_until("the new node's push to be ACKed and timed", timed, timeout=10)
        pushes = sample(text, 'crosslogic_xds_pushes_total{type="eds"}')
        assert pushes is not None and pushes_before is not None and pushes > pushes_before
        assert sample(text, 'crosslogic_xds_nacks_total{type="cds"}') == 0
        assert sample(text, 'crosslogic_xds_nacks_total{type="eds"}') == 0
        applied = sample(text, 'control_plane_config_apply_seconds_sum{type="eds"}')
        assert applied is not None and applied < 5
        nodes = f'control_plane_active_nodes{{model="{MODEL}",region="local",state="active"}}'
        assert sample(text, nodes) == 2
