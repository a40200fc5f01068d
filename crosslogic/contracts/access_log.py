"""The access-log entry: the JSON fields Envoy writes (envoy/envoy.yaml) and billing reads.

``FIELDS`` is the whole ``json_format``, field name -> Envoy command; billing's parser
(crosslogic/billing/accesslog.py) reads no other field. Only requests ext_authz attributed
to a key are logged (``LOGGED_IF``: its ``key_id`` metadata is present).
"""

from __future__ import annotations

from crosslogic.contracts.metadata import AUTHZ, RATELIMIT, TOKEN_RESERVATION, USAGE, envoy_command

BOOT_FIELD = "boot"  # the Envoy process that wrote the line, as rendered into its config

START_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how billing parses start_time (Python)

FIELDS: dict[str, str] = {
    "request_id": "%REQ(X-REQUEST-ID)%",
    BOOT_FIELD: "${ENVOY_BOOT_ID}",
    "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "duration_ms": "%DURATION%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_node": "%UPSTREAM_HOST_NAME%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    **{
        key: envoy_command(AUTHZ, key)
        for key in ("tenant_id", "environment_id", "api_key_id", "key_id", "model", "model_id")
    },
    **{
        key: envoy_command(USAGE, key)
        for key in ("streamed", "prompt_tokens", "completion_tokens", "completion_seen")
    },
    "prompt_estimate": envoy_command(AUTHZ, "prompt_estimate"),
    # prompt estimate + completion budget: what a request abandoned before its answer costs
    "token_estimate": envoy_command(AUTHZ, "tokens"),
    "reservation": envoy_command(RATELIMIT, TOKEN_RESERVATION),
    "authz_reservation": envoy_command(AUTHZ, TOKEN_RESERVATION),
}

LOGGED_IF = (AUTHZ, "key_id")
"""(namespace, key) whose presence the access log's filter requires."""
