"""How Envoy connects to a node (its registered ``transport``), pure: plain HTTP, TLS, or
mutual TLS.

A model's clusters hold nodes of every transport, so the transport is chosen per endpoint:
each TLS node's endpoint carries ``envoy.transport_socket_match`` metadata naming its
transport and host, and its cluster lists one ``transport_socket_matches`` entry per such
pair (plain nodes match none and use the cluster's default, raw TCP). One entry per host,
because the SNI and the name its certificate must carry are the node's own; nodes sharing
a host share the entry. Separate clusters per transport would multiply the clusters
(models x regions x transports) and split each strategy's balancing in three.

Trust and identity come by SDS over the ADS stream, as Secret resources of the snapshot:
``node-ca`` (the CA a node's certificate must chain to) and ``node-client`` (the client
certificate and key Envoy presents to mTLS nodes). A rotation is a new version of the
secret, not of any cluster: Envoy uses the new certificate for new connections and keeps
the open ones, so no request is dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, struct_pb2

PLAIN, TLS, MTLS = "plain", "tls", "mtls"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CA_SECRET = "node-ca"
CLIENT_SECRET = "node-client"
MATCH_NAMESPACE = "envoy.transport_socket_match"  # Envoy's metadata key for the matches


@dataclass(frozen=True)
class NodeSecrets:
    """What SDS gives Envoy for TLS nodes: the CA to check them with (PEM), and the client
    certificate and key for mTLS nodes (PEM)."""

    ca_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes


def match_key(transport: str, host: str) -> str | None:
    """The endpoint's match value (None: plain, no match)."""
    return None if transport == PLAIN else f"{transport}:{host}"


def endpoint_metadata(transport: str, host: str) -> struct_pb2.Struct | None:
    key = match_key(transport, host)
    if key is None:
        return None
    fields = struct_pb2.Struct()
    fields.update({"node": key})
    return fields


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def upstream_tls(transport: str, host: str) -> tls_pb2.UpstreamTlsContext:
    """TLS to ``host``: its certificate must chain to the CA secret and name the host (a DNS
    name is also sent as SNI; an IP address cannot be); mTLS adds the client certificate."""
    san = common_pb2.SubjectAltNameMatcher(
        san_type=(
            common_pb2.SubjectAltNameMatcher.IP_ADDRESS
            if _is_ip(host)
            else common_pb2.SubjectAltNameMatcher.DNS
        ),
        matcher=string_pb2.StringMatcher(exact=host),
    )
    common = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2
        ),
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[san]
            ),
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                name=CA_SECRET, sds_config=_ads()
            ),
        ),
    )
    if transport == MTLS:
        common.tls_certificate_sds_secret_configs.add(name=CLIENT_SECRET, sds_config=_ads())
    return tls_pb2.UpstreamTlsContext(sni="" if _is_ip(host) else host, common_tls_context=common)


def socket_matches(
    pairs: Iterable[tuple[str, str]],
) -> list[cluster_pb2.Cluster.TransportSocketMatch]:
    """The cluster's matches for its nodes' (transport, host) pairs, in a stable order."""
    matches = []
    for transport, host in sorted(set(pairs)):
        key = match_key(transport, host)
        if key is None:
            continue
        packed = any_pb2.Any()
        packed.Pack(upstream_tls(transport, host), deterministic=True)
        criteria = struct_pb2.Struct()
        criteria.update({"node": key})
        matches.append(
            cluster_pb2.Cluster.TransportSocketMatch(
                name=key,
                match=criteria,
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=packed
                ),
            )
        )
    return matches


def secret_resources(secrets: NodeSecrets | None) -> Mapping[str, any_pb2.Any]:
    """The Secret resources of the snapshot, by name."""
    if secrets is None:
        return {}
    ca = secret_pb2.Secret(
        name=CA_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=secrets.ca_pem)
        ),
    )
    client = secret_pb2.Secret(
        name=CLIENT_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=secrets.client_cert_pem),
            private_key=base_pb2.DataSource(inline_bytes=secrets.client_key_pem),
        ),
    )
    resources = {}
    for secret in (ca, client):
        packed = any_pb2.Any()
        packed.Pack(secret, deterministic=True)
        resources[secret.name] = packed
    return resources
