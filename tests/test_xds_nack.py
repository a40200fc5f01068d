"""A NACK from the real Envoy: our ADS server, in this process, pushes a cluster Envoy must
reject; the NACK is counted, Envoy keeps the last good version, and the next good snapshot
is applied (and timed)."""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2, duration_pb2
from prometheus_client import CollectorRegistry

from crosslogic.ports import free_ports
from crosslogic.processes import envoy_binary
from crosslogic.xds.server import AggregatedDiscovery, SnapshotCache, XdsMetrics
from crosslogic.xds.snapshot import CLUSTER_TYPE, ModelEntry, Snapshot, build
from tests.support.serving import LoopThread
from tests.support.waiting import wait_until

MODELS = [ModelEntry(id=1, name="a"), ModelEntry(id=2, name="b")]

BOOTSTRAP = """
node: {{id: nack-test, cluster: test}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address:
        {{address: 127.0.0.1, port_value: {xds}}}}}}}}}]}}]
"""


class Served:
    """Our ADS servicer on ``port``, in a loop thread; ``publish`` runs in that loop."""

    def __init__(self, port: int) -> None:
        self.thread = LoopThread()
        self.registry = CollectorRegistry()
        self.cache: SnapshotCache = self.thread.call(self._start(port))

    async def _start(self, port: int) -> SnapshotCache:
        cache = SnapshotCache(build(MODELS, []))
        self.server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscovery(cache, XdsMetrics(self.registry)), self.server
        )
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return cache

    def publish(self, snapshot: Snapshot) -> None:
        async def go() -> None:
            self.cache.publish(snapshot, noticed_at=None)

        self.thread.call(go())

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.thread.call(self.server.stop(grace=None))
        self.thread.close()


@pytest.fixture()
def envoy_and_server() -> Iterator[tuple[Served, str]]:
    xds, admin = free_ports(2)
    served = Served(xds)
    with tempfile.TemporaryDirectory(prefix="cln-", dir="/tmp") as work:
        config = Path(work) / "envoy.yaml"
        config.write_text(BOOTSTRAP.format(admin=admin, xds=xds))
        envoy = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield served, f"http://127.0.0.1:{admin}"
        finally:
            envoy.kill()
            envoy.wait(timeout=10)
            served.close()


def cds_version(admin_url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{admin_url}/config_dump", timeout=2) as r:
            dump = json.load(r)
    except OSError:
        return None
    for config in dump["configs"]:
        if config["@type"].endswith("ClustersConfigDump"):
            return str(config.get("version_info", ""))
    return None


def with_bad_cluster(good: Snapshot) -> Snapshot:
    """``good`` with model_2's cluster broken: a zero connect timeout fails Envoy's proto
    validation (the snapshot stays consistent, so only Envoy can tell)."""
    cluster = cluster_pb2.Cluster()
    good.resources[CLUSTER_TYPE]["model_2"].Unpack(cluster)
    cluster.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=0))
    bad = any_pb2.Any()
    bad.Pack(cluster)
    clusters = {**good.resources[CLUSTER_TYPE], "model_2": bad}
    return Snapshot(
        resources={**good.resources, CLUSTER_TYPE: clusters},
        versions={**good.versions, CLUSTER_TYPE: "bad-" + good.versions[CLUSTER_TYPE]},
    )


def test_envoy_rejects_a_bad_cluster_keeps_the_last_good_one_and_takes_the_next(
    envoy_and_server: tuple[Served, str], caplog: pytest.LogCaptureFixture
) -> None:
    served, admin_url = envoy_and_server
    good = served.cache.current
    wait_until(
        "Envoy to ACK the first snapshot",
        lambda: cds_version(admin_url) == good.versions[CLUSTER_TYPE],
    )

    with caplog.at_level(logging.ERROR, logger="crosslogic.xds.server"):
        served.publish(with_bad_cluster(good))
        wait_until("the NACK", lambda: served.value("crosslogic_xds_nacks_total", type="cds") == 1)
    assert cds_version(admin_url) == good.versions[CLUSTER_TYPE]  # Envoy keeps it
    said = caplog.records[-1].getMessage()
    assert f"keeps version {good.versions[CLUSTER_TYPE]}: ..." in said, said
    assert said.endswith("value must be greater than 0s)"), said  # why, on one line

    fixed = build([*MODELS, ModelEntry(id=3, name="c")], [])  # a new CDS version
    served.publish(fixed)
    wait_until(
        "the next good snapshot", lambda: cds_version(admin_url) == fixed.versions[CLUSTER_TYPE]
    )
    assert served.value("crosslogic_xds_nacks_total", type="cds") == 1
    assert served.value("crosslogic_xds_pushes_total", type="cds") == 3
