"""The client certificate Envoy presents to nodes registered with transport ``mtls``: issued
by the control plane's CA, kept beside it (``node-client.pem``, certificate and key in one
file) so that every xDS replica publishes the same one, and renewed once a third of its
lifetime is left. A renewal (or :func:`rotate`) is a new SDS secret version: Envoy uses the
new certificate for new connections, and the old one stays valid until it expires."""

from __future__ import annotations

import datetime
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from crosslogic.tls import ca, issue
from crosslogic.xds.transport import NodeSecrets

FILE = "node-client.pem"
COMMON_NAME = "crosslogic-gateway"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One issuer at a time among the processes sharing the CA's folder (xDS replicas):
    two renewals at once would publish two certificates, one per replica."""
    with (folder / ".node-client.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> tuple[bytes, bytes] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    cert_end = data.index(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    return data[:cert_end], data[cert_end:]


def _due(cert_pem: bytes, lifetime: datetime.timedelta, now: datetime.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc - now < lifetime / 3


def rotate(folder: Path, *, lifetime: datetime.timedelta) -> issue.Issued:
    """Issue a new client certificate now (the next snapshot of every xDS replica pushes it)."""
    authority = ca.load_or_create(folder)
    with _locked(folder):
        issued = issue.client_certificate(authority, COMMON_NAME, lifetime=lifetime)
        ca.write_atomically(folder / FILE, issued.cert_pem + issued.key_pem, mode=0o600)
    return issued


def node_secrets(
    folder: Path,
    *,
    lifetime: datetime.timedelta,
    trusted_ca: Path | None = None,
    now: datetime.datetime | None = None,
) -> NodeSecrets:
    """What SDS gives Envoy: the CA nodes are checked against (``trusted_ca``, default the
    control plane's) and the current client certificate, renewed here when it is due."""
    authority = ca.load_or_create(folder)
    now = now or datetime.datetime.now(datetime.UTC)
    current = _read(folder / FILE)
    if current is None or _due(current[0], lifetime, now):
        with _locked(folder):  # again under the lock: another replica may have renewed it
            current = _read(folder / FILE)
            if current is None or _due(current[0], lifetime, now):
                issued = issue.client_certificate(authority, COMMON_NAME, lifetime=lifetime)
                ca.write_atomically(folder / FILE, issued.cert_pem + issued.key_pem, mode=0o600)
                current = issued.cert_pem, issued.key_pem
    trusted = trusted_ca.read_bytes() if trusted_ca is not None else authority.cert_pem
    return NodeSecrets(ca_pem=trusted, client_cert_pem=current[0], client_key_pem=current[1])
