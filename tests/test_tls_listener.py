"""The OpenAI listener over TLS (LISTENER_TLS=on): `crosslogic up` prints the line a client
trusts it with, TLS 1.1 and plain HTTP are refused, ALPN offers HTTP/2, and a replaced
certificate is served to new connections without restarting Envoy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from cryptography import x509

from crosslogic.settings import SettingsError, load, to_env
from crosslogic.tls import ca, issue
from tests.support.system import logs_in
from tests.support.up import CROSSLOGIC, printed_lines, up_environment
from tests.support.waiting import wait_until

PRINTED = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MODEL", "SSL_CERT_FILE")
# a client of the SDK, in a process of its own: the environment `up` says to paste is all
# it is given (the SDK's HTTP client reads SSL_CERT_FILE when it is created)
SDK_CALL = """
import openai, os
client = openai.OpenAI(max_retries=0)
reply = client.chat.completions.create(
    model=os.environ["MODEL"], messages=[{"role": "user", "content": "hi"}]
)
print(reply.choices[0].message.content)
"""


@dataclass
class Up:
    process: subprocess.Popen[str]
    data_dir: Path
    lines: dict[str, str]

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.lines["OPENAI_BASE_URL"])
        assert parts.hostname and parts.port
        return parts.hostname, parts.port

    def envoy(self) -> psutil.Process:
        (envoy,) = [p for p in psutil.Process(self.process.pid).children() if p.name() == "envoy"]
        return envoy


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    data_dir = Path(tempfile.mkdtemp(prefix="cltls-", dir="/tmp"))
    _, env = up_environment(data_dir)
    env["LISTENER_TLS"] = "on"
    process = subprocess.Popen(
        [*CROSSLOGIC, "up", "--nodes", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = printed_lines(process.stdout, PRINTED)
        assert set(lines) == {*PRINTED, "curl"}, logs_in(data_dir)
        yield Up(process, data_dir, lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def handshake(up: Up, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(up.address, timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def trusting(up: Up) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=up.lines["SSL_CERT_FILE"])


def test_the_printed_lines_work_with_the_openai_sdk_and_curl(up: Up) -> None:
    assert up.lines["OPENAI_BASE_URL"].startswith("https://")
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update({name: up.lines[name] for name in PRINTED})
    sdk = subprocess.run(
        [sys.executable, "-c", SDK_CALL], env=env, capture_output=True, text=True, timeout=60
    )
    assert sdk.returncode == 0, sdk.stderr + logs_in(up.data_dir)
    assert sdk.stdout.strip()
    # without the trust line the same client refuses the certificate
    del env["SSL_CERT_FILE"]
    untrusted = subprocess.run(
        [sys.executable, "-c", SDK_CALL], env=env, capture_output=True, text=True, timeout=60
    )
    assert untrusted.returncode != 0
    assert "APIConnectionError" in untrusted.stderr, untrusted.stderr
    curl = subprocess.run(
        up.lines["curl"], shell=True, capture_output=True, text=True, timeout=30, check=True
    )
    assert '"chat.completion"' in curl.stdout, curl.stderr


def test_plain_http_is_not_served(up: Up) -> None:
    host, port = up.address
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{host}:{port}/v1/models", timeout=10)


def test_tls_1_1_is_refused_and_1_2_is_accepted(up: Up) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    # the local OpenSSL offers TLS 1.1 only at security level 0 (and with SHA-1 suites)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused:
        handshake(up, old)
    # Envoy's alert, not a client that could not even offer 1.1
    assert "PROTOCOL_VERSION" in str(refused.value).upper(), refused.value
    tls12 = trusting(up)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(up, tls12) as conn:
        assert conn.version() == "TLSv1.2"
        cipher = conn.cipher()
        assert cipher is not None and cipher[0].startswith("ECDHE-") and "GCM" in cipher[0]


def test_tls_1_2_without_forward_secrecy_is_refused(up: Up) -> None:
    weak = trusting(up)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES128-GCM-SHA256")  # RSA key exchange, no ECDHE
    with pytest.raises(ssl.SSLError):
        handshake(up, weak)


def test_alpn_offers_http2_and_http1(up: Up) -> None:
    for protocols, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        context = trusting(up)
        context.set_alpn_protocols(protocols)
        with handshake(up, context) as conn:
            assert conn.selected_alpn_protocol() == chosen
    # and a request over HTTP/2 is answered
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        curl = subprocess.run(
            [
                "curl",
                "-s",
                flag,
                "--cacert",
                up.lines["SSL_CERT_FILE"],
                "-H",
                f"Authorization: Bearer {up.lines['OPENAI_API_KEY']}",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                up.lines["OPENAI_BASE_URL"] + "/models",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert curl.stdout == f"{version} 200", curl.stdout + curl.stderr


def served_serial(up: Up) -> int:
    with handshake(up, trusting(up)) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_replaced_certificate_is_served_without_a_restart(up: Up) -> None:
    envoy = up.envoy()
    folder = up.data_dir / "tls"
    before = served_serial(up)
    replacement = issue.server_certificate(ca.load(folder), ["localhost", "127.0.0.1"])
    assert replacement.serial != before
    # as an operator (or cert-manager) replaces them: each file in one rename
    ca.write_atomically(folder / "listener.key", replacement.key_pem, mode=0o600)
    ca.write_atomically(folder / "listener.crt", replacement.cert_pem)
    wait_until(
        "Envoy to serve the new certificate",
        lambda: served_serial(up) == replacement.serial,
        timeout=30,
    )
    assert up.envoy().pid == envoy.pid  # the same process: read again, not restarted
    with urllib.request.urlopen(
        urllib.request.Request(
            up.lines["OPENAI_BASE_URL"] + "/models",
            headers={"Authorization": f"Bearer {up.lines['OPENAI_API_KEY']}"},
        ),
        context=trusting(up),
        timeout=10,
    ) as response:
        assert json.load(response)["data"]


def test_tls_settings_are_validated_and_round_trip() -> None:
    chosen = load(
        {"LISTENER_TLS": "on", "TLS_CERT_FILE": "/c/tls.crt", "TLS_KEY_FILE": "/c/tls.key"}
    )
    assert (chosen.listener_tls, chosen.tls_cert_file) == ("on", Path("/c/tls.crt"))
    assert load(to_env(chosen)) == chosen
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE go together"):
        load({"TLS_CERT_FILE": "/c/tls.crt"})
    with pytest.raises(SettingsError, match="LISTENER_TLS='yes' must be one of off, on"):
        load({"LISTENER_TLS": "yes"})
    with pytest.raises(SettingsError, match="NODE_CLIENT_CERT_LIFETIME"):
        load({"NODE_CLIENT_CERT_LIFETIME": "-1"})
