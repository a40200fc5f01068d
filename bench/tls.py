"""TLS on the listener: (b') plain Envoy and (f) the whole gateway (limits in ext_authz, over
HTTP: (e)'s configuration), both serving HTTPS with the same TLS context (the gateway's
envoy/listener-tls.yaml: TLS 1.2+, ECDHE with AEAD ciphers, the certificate by file SDS). The
gateway's requests/s are reported as a share of plain Envoy's with TLS in the same run, and
each against its own run without TLS ((b) and (e)), which is what TLS itself costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from bench.envoys import BaselineEnvoys
from bench.report import GatewayRun, Target, percent
from crosslogic.envoy_config import fragments, template_dir
from crosslogic.settings import Settings
from crosslogic.tls import ca, issue
from crosslogic.tls.listener import LOCAL_NAMES, sds_resource


def listener_tls(work_dir: Path) -> str:
    """The gateway's listener TLS fragment, for plain Envoy: a certificate from a CA of its
    own, read through an SDS file as the gateway reads its own."""
    folder = work_dir / "plain-tls"
    authority = ca.load_or_create(folder)
    issued = issue.server_certificate(authority, LOCAL_NAMES)
    cert, key = folder / "listener.crt", folder / "listener.key"
    key.write_bytes(issued.key_pem)
    cert.write_bytes(issued.cert_pem)
    sds = folder / "listener-sds.json"
    settings = Settings(listener_tls="on", tls_cert_file=cert, tls_key_file=key)
    sds.write_text(sds_resource(settings))
    fragment = fragments(template_dir() / "listener-tls.yaml")["LISTENER_TLS"]
    return Template(fragment).substitute(LISTENER_SDS_PATH=sds)


def start_plain_tls(envoys: BaselineEnvoys, *, upstream_port: int) -> int:
    return envoys.start_plain(
        upstream_port=upstream_port, listener_tls=listener_tls(envoys.work_dir)
    )


@dataclass(frozen=True)
class TlsFigures:
    plain: Target  # (b) plain Envoy over plain HTTP
    plain_tls: Target  # (b') the same over TLS
    gateway: GatewayRun | None  # (e) the gateway over plain HTTP, when it ran
    gateway_tls: GatewayRun  # (f) the same gateway over TLS

    def lines(self) -> list[str]:
        f, b_tls = self.gateway_tls.target.result, self.plain_tls.result
        said = [
            f"(f) gateway over TLS: {f.rps:,.0f} req/s = {percent(f.rps, b_tls.rps)} of plain "
            f"Envoy over TLS ({b_tls.rps:,.0f} req/s, same run); p50 "
            f"{f.p50_ms - b_tls.p50_ms:+.2f} ms, p99 {f.p99_ms - b_tls.p99_ms:+.2f} ms over it",
            f"TLS itself: plain Envoy keeps {percent(b_tls.rps, self.plain.result.rps)} of "
            "its requests/s without TLS",
        ]
        if self.gateway is not None:
            e = self.gateway.target.result
            said.append(
                f"TLS itself: the gateway keeps {percent(f.rps, e.rps)} of its requests/s "
                f"without TLS ((e): {e.rps:,.0f} req/s = {percent(e.rps, self.plain.result.rps)}"
                " of plain Envoy without TLS)"
            )
        return said

    def markdown(self) -> str:
        rows = [
            "| TLS on the listener | req/s | p50 | p99 | req/s vs plain Envoy over TLS |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, r in (
            ("(b') plain Envoy over TLS", self.plain_tls.result),
            ("(f) gateway over TLS (as (e))", self.gateway_tls.target.result),
        ):
            rows.append(
                f"| {label} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
                f"{percent(r.rps, self.plain_tls.result.rps)} |"
            )
        return "\n".join(rows)
