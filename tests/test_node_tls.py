"""Nodes reached over TLS and mutual TLS: a node's transport is part of its registration;
Envoy checks the node's certificate against the control plane's CA (and its name), and
presents to mTLS nodes a client certificate pushed by SDS over ADS, rotated without losing
a request."""

from __future__ import annotations

import datetime
import json
import shutil
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from crosslogic.errors import Invalid
from crosslogic.fleet.requests import parse_registration
from crosslogic.node.main import run as run_node
from crosslogic.stack import Stack
from crosslogic.tls import ca, client, issue
from crosslogic.tls.listener import ca_dir
from crosslogic.xds.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    ModelEntry,
    NodeEntry,
    Snapshot,
    build,
)
from crosslogic.xds.transport import SECRET_TYPE
from tests.support.system import MODEL, log_tails, own_system
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def system() -> Iterator[Stack]:
    with own_system(nodes=0) as running:
        yield running


def sdk(stack: Stack) -> openai.OpenAI:
    assert stack.demo is not None
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.demo.api_key, max_retries=0)


def ask(stack: Stack) -> str:
    reply = sdk(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return reply.choices[0].message.content or ""


def server_files(stack: Stack, name: str, authority: ca.CertificateAuthority) -> list[str]:
    """A node's certificate and key, for the names Envoy reaches it by, as files."""
    issued = issue.server_certificate(authority, ["localhost", "127.0.0.1"])
    cert, key = stack.data_dir / f"{name}.crt", stack.data_dir / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def stats(stack: Stack, pattern: str) -> dict[str, int]:
    url = f"{stack.envoy_admin_url}/stats?format=json&filter={pattern}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return {s["name"]: int(s.get("value", 0)) for s in json.load(response)["stats"]}


def healthy(stack: Stack) -> int:
    return stats(stack, f"^cluster.model_{MODEL}.membership_healthy$").get(
        f"cluster.model_{MODEL}.membership_healthy", 0
    )


def client_serials(stack: Stack) -> set[str]:
    """Serial numbers of the client certificates Envoy holds (its admin /certs)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/certs", timeout=5) as response:
        contexts = json.load(response).get("certificates", [])
    return {
        cert["serial_number"].lower().lstrip("0")
        for context in contexts
        for cert in context.get("cert_chain", [])
        if "spiffe://crosslogic/crosslogic-gateway" in json.dumps(cert.get("subject_alt_names"))
    }


def stop_nodes(stack: Stack) -> None:
    for child in list(stack.nodes):
        stack.supervisor.stop_child(child)
        stack.nodes.remove(child)
    wait_until("no node in Envoy", lambda: healthy(stack) == 0, timeout=60)


def test_transport_is_validated_at_registration() -> None:
    base = {"model": MODEL, "address": "localhost", "port": 8000}
    assert parse_registration(base).transport == "plain"
    assert parse_registration({**base, "transport": "mtls"}).transport == "mtls"
    for bad in ("https", "", None, 1, "TLS"):
        with pytest.raises(Invalid, match="'transport' must be one of plain, tls, mtls"):
            parse_registration({**base, "transport": bad})


def test_the_node_refuses_tls_flags_that_do_not_go_together(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.pem")
    assert run_node(["--client-ca", missing]) == 2
    assert run_node(["--tls-cert", missing]) == 2
    assert run_node(["--tls-cert", missing, "--tls-key", missing]) == 2  # unreadable
    assert run_node(["--transport", "mtls"]) == 2  # no certificates for it


def test_an_mtls_node_serves_only_through_envoys_client_certificate(system: Stack) -> None:
    authority = ca.load_or_create(ca_dir(system.settings))
    system.start_node(
        "mtls-1",
        extra=(
            *server_files(system, "mtls-1", authority),
            "--client-ca",
            str(authority.cert_file),
            "--advertise-address",
            "localhost",
        ),
    )
    try:
        wait_until("the mTLS node healthy in Envoy", lambda: healthy(system) == 1, timeout=60)
    except TimeoutError as exc:
        raise AssertionError(log_tails(system)) from exc
    assert ask(system)
    # the same node, straight: trusted, but without a client certificate it refuses
    url = wait_until("the node's address", lambda: node_url(system, "mtls-1"))
    trusting = ssl.create_default_context(cafile=authority.cert_file)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"{url}/health", context=trusting, timeout=5).read()
    # ... and with a certificate of another CA
    other = ca.load_or_create(system.data_dir / "other-ca", name="not the control plane")
    stranger = issue.client_certificate(other, "stranger", lifetime=datetime.timedelta(hours=1))
    cert, key = system.data_dir / "stranger.crt", system.data_dir / "stranger.key"
    cert.write_bytes(stranger.cert_pem)
    key.write_bytes(stranger.key_pem)
    trusting.load_cert_chain(cert, key)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"{url}/health", context=trusting, timeout=5).read()
    # Envoy sends the node's host name as SNI and checks the certificate names it
    with urllib.request.urlopen(f"{system.envoy_admin_url}/config_dump", timeout=5) as r:
        dump = r.read().decode()
    assert '"sni": "localhost"' in dump


def test_rotating_the_client_certificate_drops_no_request(system: Stack) -> None:
    if healthy(system) != 1:
        pytest.skip("needs the mTLS node of the test before")
    folder = ca_dir(system.settings)
    before = client_serials(system)
    assert before, "Envoy holds no client certificate"
    handshakes = f"^cluster.model_{MODEL}.ssl.handshake$"
    failures: list[BaseException] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                ask(system)
                answered += 1
            except Exception as exc:
                failures.append(exc)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_until("requests flowing", lambda: answered >= 20, timeout=60)
        rotated = client.rotate(folder, lifetime=datetime.timedelta(hours=24))
        serial = f"{rotated.serial:x}"
        wait_until(
            "Envoy to hold the new client certificate",
            lambda: client_serials(system) == {serial},
            timeout=30,
        )
        # connections opened from now on present it: wait for one (the pool opens new
        # ones as the load needs; the old certificate is gone from Envoy)
        opened = sum(stats(system, handshakes).values())
        seen = answered
        wait_until("more requests after the rotation", lambda: answered >= seen + 30, timeout=60)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not failures, failures[:3]
    assert serial not in before
    # a connection made now can only present the new certificate: it is accepted (the node
    # killed and restarted by its supervisor: every connection to it is new)
    system.nodes[-1].proc.kill()
    wait_until("an answer over a new connection", lambda: _answers(system), timeout=60)
    assert sum(stats(system, handshakes).values()) > opened


def _answers(stack: Stack) -> bool:
    try:
        return bool(ask(stack))
    except openai.APIError:
        return False


def node_url(stack: Stack, node_id: str) -> str | None:
    """The node's https URL as the registry lists it (None: not registered yet)."""
    request = urllib.request.Request(
        f"{stack.admin_url}/admin/nodes",
        headers={"Authorization": f"Bearer {stack.settings.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        nodes = {n["id"]: n for n in json.load(response)["nodes"]}
    node = nodes.get(node_id)
    if node is None:
        return None
    assert node["transport"] == "mtls"
    return f"https://{node['address']}:{node['port']}"


def test_a_tls_node_whose_certificate_envoy_cannot_trust_gets_no_traffic(system: Stack) -> None:
    stop_nodes(system)
    stranger = ca.load_or_create(system.data_dir / "other-ca", name="not the control plane")
    system.start_node(
        "tls-untrusted",
        extra=(*server_files(system, "untrusted", stranger), "--advertise-address", "localhost"),
    )
    failed = f"^cluster.model_{MODEL}.ssl.fail_verify_error$"
    wait_until(
        "Envoy to refuse the node's certificate",
        lambda: sum(stats(system, failed).values()) > 0,
        timeout=60,
    )
    assert healthy(system) == 0
    authority = ca.load_or_create(ca_dir(system.settings))
    system.start_node(
        "tls-1",
        extra=(*server_files(system, "tls-1", authority), "--advertise-address", "localhost"),
    )
    wait_until("the trusted TLS node healthy", lambda: healthy(system) == 1, timeout=60)
    assert ask(system)


# -- the pure parts: the snapshot's transport sockets and secrets, the client certificate --


def tls_snapshot(*, secrets: bool) -> Snapshot:
    folder = Path(tempfile.mkdtemp(prefix="cltn-", dir="/tmp"))
    try:
        given = client.node_secrets(folder, lifetime=datetime.timedelta(hours=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    nodes = [
        NodeEntry(id="p", model_id=1, ip="10.0.0.1", port=8000),
        NodeEntry(id="t", model_id=1, ip="10.0.0.2", port=8000, transport="tls", host="gpu-t"),
        NodeEntry(id="m", model_id=1, ip="10.0.0.3", port=8000, transport="mtls", host="10.0.0.3"),
    ]
    return build([ModelEntry(id=1, name=MODEL)], nodes, secrets=given if secrets else None)


def test_each_tls_node_gets_its_transport_socket_and_the_secrets_are_published() -> None:
    snapshot = tls_snapshot(secrets=True)
    assert snapshot.consistent() and snapshot.needs_secrets
    cluster = cluster_pb2.Cluster()
    snapshot.resources[CLUSTER_TYPE]["model_1"].Unpack(cluster)
    matches = {m.name: m for m in cluster.transport_socket_matches}
    assert set(matches) == {"tls:gpu-t", "mtls:10.0.0.3"}  # plain: the default socket
    for name, sni, client_cert in (("tls:gpu-t", "gpu-t", False), ("mtls:10.0.0.3", "", True)):
        context = tls_pb2.UpstreamTlsContext()
        matches[name].transport_socket.typed_config.Unpack(context)
        assert context.sni == sni  # a host name is sent, an IP address cannot be
        common = context.common_tls_context
        assert bool(common.tls_certificate_sds_secret_configs) == client_cert
        san = common.combined_validation_context.default_validation_context
        assert san.match_typed_subject_alt_names[0].matcher.exact == name.split(":", 1)[1]
    assignment = endpoint_pb2.ClusterLoadAssignment()
    snapshot.resources[ENDPOINT_TYPE]["model_1"].Unpack(assignment)
    metadata = {
        e.endpoint.hostname: dict(e.metadata.filter_metadata["envoy.transport_socket_match"])
        for e in assignment.endpoints[0].lb_endpoints
    }
    assert metadata == {"p": {}, "t": {"node": "tls:gpu-t"}, "m": {"node": "mtls:10.0.0.3"}}
    assert set(snapshot.resources[SECRET_TYPE]) == {"node-ca", "node-client"}


def test_without_secrets_tls_nodes_are_left_out() -> None:
    snapshot = tls_snapshot(secrets=False)
    assert snapshot.consistent() and not snapshot.needs_secrets
    assert snapshot.nodes_per_cluster == {"model_1": 1}


def test_the_client_certificate_is_kept_renewed_when_due_and_rotated(tmp_path: Path) -> None:
    lifetime = datetime.timedelta(hours=3)
    first = client.node_secrets(tmp_path, lifetime=lifetime)
    assert client.node_secrets(tmp_path, lifetime=lifetime) == first  # every replica: one
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2, minutes=1)
    renewed = client.node_secrets(tmp_path, lifetime=lifetime, now=later)  # a third left
    assert renewed.client_cert_pem != first.client_cert_pem
    assert renewed.ca_pem == first.ca_pem
    rotated = client.rotate(tmp_path, lifetime=lifetime)
    assert client.node_secrets(tmp_path, lifetime=lifetime).client_cert_pem == rotated.cert_pem
