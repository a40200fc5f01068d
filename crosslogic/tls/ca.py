"""The control plane's certificate authority: one ECDSA P-256 key and a self-signed root,
kept in one directory (``TLS_CA_DIR``; DATA_DIR/tls by default).

The key and certificate are written together as one file (``ca.pem``) by an exclusive link:
several processes starting at once (the xDS replicas, the stack) agree on a single CA, the
first one's. ``ca.crt`` beside it is the certificate alone, what clients and nodes trust.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
BUNDLE = "ca.pem"  # key and certificate: read by whoever issues
CERT = "ca.crt"  # the certificate alone: what a client or a node trusts


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues certificates (:mod:`crosslogic.tls.issue`); ``cert_file`` is its
    certificate in PEM, for clients to trust."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _new_root(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """``path`` replaced in one rename: a reader (Envoy's file watch) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def load_or_create(folder: Path, *, name: str = "CrossLogic local CA") -> CertificateAuthority:
    """The CA kept in ``folder``, created there on first use."""
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / BUNDLE
    if not bundle.exists():
        key, cert = _new_root(name)
        tmp = folder / f".{BUNDLE}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
        # link fails if another process created the CA first: theirs is kept
        with contextlib.suppress(FileExistsError):
            os.link(tmp, bundle)
        tmp.unlink()
    return load(folder)


def load(folder: Path) -> CertificateAuthority:
    data = (folder / BUNDLE).read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / BUNDLE}: the CA key must be an EC key")
    cert = x509.load_pem_x509_certificate(data)
    cert_file = folder / CERT
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if not cert_file.exists() or cert_file.read_bytes() != pem:
        write_atomically(cert_file, pem)
    return CertificateAuthority(key=key, cert=cert, cert_file=cert_file)
