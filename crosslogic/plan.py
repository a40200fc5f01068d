"""What a stack will run, decided before anything starts.

Every process of a stack is given the same final settings: where the embedded PostgreSQL
and Redis will be is known before they start (a socket below DATA_DIR, REDIS_PORT), and an
admin token is made up when none is set (the admin API is locked without one), as is the
nodes' registration token (the stack's nodes are given it, never the admin token). With
LISTENER_TLS=on and no TLS_CERT_FILE, the listener's certificate files are named below the
CA's directory and issued at start.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from crosslogic import embedded
from crosslogic.fleet.credentials import new_registration_token
from crosslogic.services import service_ports
from crosslogic.settings import Settings
from crosslogic.tls import listener


@dataclass(frozen=True)
class Plan:
    """The final ``settings`` of a stack, and which databases it starts itself."""

    settings: Settings
    embedded_postgres: bool
    embedded_redis: bool
    issue_listener_cert: bool = False  # LISTENER_TLS=on without TLS_CERT_FILE

    def ports(self) -> dict[str, int]:
        """Every port the stack listens on, by variable name."""
        s = self.settings
        wanted = service_ports(s)
        for n in range(s.gateways):  # Settings.gateway says where gateway n listens
            plus, gateway = (f"+{n}" if n else ""), s.gateway(n)
            wanted[f"ENVOY_PORT{plus}"] = gateway.envoy_port
            wanted[f"ENVOY_ADMIN_PORT{plus}"] = gateway.envoy_admin_port
        if self.embedded_redis:
            wanted["REDIS_PORT"] = s.redis_port
        return wanted


def plan(settings: Settings) -> Plan:
    """DB_HOST / REDIS_HOST unset: the stack starts embedded servers, and the settings name
    them."""
    final = settings
    if settings.db_host is None:
        final = embedded.postgres_settings(final)
    if settings.redis_host is None:
        final = embedded.redis_settings(final)
    if not final.admin_token:
        final = final.with_overrides(admin_token=secrets.token_urlsafe(24))
    if not final.node_registration_token:
        final = final.with_overrides(node_registration_token=new_registration_token())
    issue_listener_cert = final.listener_tls == "on" and final.tls_cert_file is None
    final = listener.with_local_files(final)
    return Plan(
        settings=final,
        issue_listener_cert=issue_listener_cert,
        embedded_postgres=settings.db_host is None,
        embedded_redis=settings.redis_host is None and not settings.redis_cluster,
    )
