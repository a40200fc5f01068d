"""Envoy dynamic metadata: who writes which key in which namespace, and who reads it.

ext_authz writes ``AUTHZ_KEYS`` under ``AUTHZ`` with its allow answer; Envoy's rate-limit
filter turns ``DESCRIPTOR_KEYS`` of them into the one descriptor the rate-limit service reads
(envoy/ratelimit-filter.yaml), usage.lua reads ``FORCE_INCLUDE_USAGE``, and the access log
copies the rest for billing. The token reservation is written under ``RATELIMIT`` by the
rate-limit service, or under ``AUTHZ`` when ext_authz decides limits (RATELIMIT_AT=authz);
its value is ``crosslogic.contracts.counters.Reservation``. Token usage is written under
``USAGE`` by usage.lua or Envoy's json_to_metadata filter (envoy/envoy.yaml).
"""

from __future__ import annotations

AUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
USAGE = "crosslogic.usage"

TOKEN_RESERVATION = "token_reservation"
FORCE_INCLUDE_USAGE = "force_include_usage"

# Rate-limit descriptor entries: each is copied from the ext_authz key of the same name
# (strings, as Envoy copies them as they are).
DESCRIPTOR_KEYS = ("tenant_id", "environment_id", "api_key_id", "plan", "key_rpm", "tokens")

AUTHZ_KEYS = frozenset(
    {
        *DESCRIPTOR_KEYS,
        "key_id",  # present on every request ext_authz allowed: the access log's filter
        "prompt_estimate",
        "model",
        "model_id",
        FORCE_INCLUDE_USAGE,
        TOKEN_RESERVATION,
    }
)

USAGE_KEYS = frozenset({"streamed", "prompt_tokens", "completion_tokens", "completion_seen"})

KEYS = {AUTHZ: AUTHZ_KEYS, RATELIMIT: frozenset({TOKEN_RESERVATION}), USAGE: USAGE_KEYS}
"""Every namespace and its keys."""


def envoy_command(namespace: str, key: str) -> str:
    """The access-log command that reads one key."""
    return f"%DYNAMIC_METADATA({namespace}:{key})%"
