"""The request-time shapes the system supports, as settings: where the rate-limit decision is
made (RATELIMIT_AT) and how Envoy asks ext_authz (EXTAUTHZ_PROTOCOL). Tests run each
behaviour in them and the benchmark compares them; each is named in full, whatever the
defaults are."""

from __future__ import annotations

SHAPES: dict[str, dict[str, str]] = {
    # the default: ext_authz over HTTP decides auth and every limit in one call
    "http": {"ratelimit_at": "authz", "extauthz_protocol": "http"},
    # ext_authz over gRPC deciding the limits too
    "authz": {"ratelimit_at": "authz", "extauthz_protocol": "grpc"},
    # Envoy's rate-limit filter asks the rate-limit service; ext_authz over gRPC or HTTP
    "service": {"ratelimit_at": "service", "extauthz_protocol": "grpc"},
    "http-service": {"ratelimit_at": "service", "extauthz_protocol": "http"},
}
