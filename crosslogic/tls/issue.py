"""Certificates issued by the control plane's CA, pure but for the clock and randomness:
servers (the listener, a simulated node) and clients (Envoy towards mTLS nodes)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crosslogic.tls.ca import CertificateAuthority, key_pem

SERVER_LIFETIME = datetime.timedelta(days=90)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number

    @property
    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, each as the SAN type it is."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _issue(
    ca: CertificateAuthority,
    *,
    common_name: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    lifetime: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # a little slack for clocks that disagree by a minute
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def server_certificate(
    ca: CertificateAuthority,
    names: Sequence[str],
    *,
    lifetime: datetime.timedelta = SERVER_LIFETIME,
) -> Issued:
    """A server certificate for ``names`` (host names and IP addresses)."""
    names = list(dict.fromkeys(names))  # each once (a SAN list with repeats is refused)
    if not names:
        raise ValueError("a server certificate needs at least one name")
    return _issue(
        ca,
        common_name=names[0],
        names=subject_names(names),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        lifetime=lifetime,
    )


def client_certificate(
    ca: CertificateAuthority, common_name: str, *, lifetime: datetime.timedelta
) -> Issued:
    """A client certificate (what Envoy presents to nodes that require mTLS), named
    ``spiffe://crosslogic/<common_name>`` too: a node may authorize that identity."""
    return _issue(
        ca,
        common_name=common_name,
        names=[x509.UniformResourceIdentifier(f"spiffe://crosslogic/{common_name}")],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        lifetime=lifetime,
    )
