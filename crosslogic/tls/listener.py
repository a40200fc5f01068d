"""The OpenAI listener's certificate: where it is, issuing it for `crosslogic up`, and the
file-based SDS resource through which Envoy reads it (and reads it again when it changes)."""

from __future__ import annotations

import json
from pathlib import Path

from crosslogic.settings import Settings
from crosslogic.tls import ca, issue
from crosslogic.xds.transport import SECRET_TYPE

SECRET_NAME = "listener"  # the SDS secret the listener's TLS context names (listener-tls.yaml)
# the names a locally issued listener certificate is valid for: what `up` prints (127.0.0.1)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def ca_dir(settings: Settings) -> Path:
    """Where the control plane's CA is kept (TLS_CA_DIR, or DATA_DIR/tls)."""
    return (settings.tls_ca_dir or settings.data_dir / "tls").resolve()


def with_local_files(settings: Settings) -> Settings:
    """LISTENER_TLS=on without TLS_CERT_FILE: the settings name the files `up` issues."""
    if settings.listener_tls != "on" or settings.tls_cert_file is not None:
        return settings
    folder = ca_dir(settings)
    return settings.with_overrides(
        tls_cert_file=folder / "listener.crt", tls_key_file=folder / "listener.key"
    )


def issue_local(settings: Settings) -> Path:
    """Issue the listener's certificate from the control plane's CA into the files the
    settings name; returns the CA's certificate file (what a client trusts)."""
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    authority = ca.load_or_create(ca_dir(settings))
    issued = issue.server_certificate(authority, LOCAL_NAMES)
    # the key first: a watcher that sees the certificate change reads a matching key
    ca.write_atomically(settings.tls_key_file, issued.key_pem, mode=0o600)
    ca.write_atomically(settings.tls_cert_file, issued.cert_pem)
    return authority.cert_file


def sds_resource(settings: Settings) -> str:
    """The file Envoy's listener reads its certificate from (a DiscoveryResponse in JSON,
    which is YAML). Envoy watches the certificate's directory (``watched_directory``) and
    reloads certificate and key as a pair when a file is moved into it."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("LISTENER_TLS=on needs TLS_CERT_FILE and TLS_KEY_FILE")
    cert, key = settings.tls_cert_file.absolute(), settings.tls_key_file.absolute()
    secret = {
        "@type": SECRET_TYPE,
        "name": SECRET_NAME,
        "tls_certificate": {
            "certificate_chain": {"filename": str(cert)},
            "private_key": {"filename": str(key)},
            "watched_directory": {"path": str(cert.parent)},
        },
    }
    return json.dumps({"resources": [secret]}, indent=2) + "\n"
