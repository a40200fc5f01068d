"""The CheckResponses ext_authz answers Envoy with, and the one mapping of errors to denials.

A denial carries the HTTP status and OpenAI error body the client sees; an allow carries the
routing headers (which cluster, how Envoy reads usage) and the dynamic metadata that rate
limiting, billing and the access log read. Allow responses are immutable protos, built once per
decision and cached by the servicer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from crosslogic.contracts import routing
from crosslogic.contracts.metadata import TOKEN_RESERVATION
from crosslogic.contracts.routing import CLUSTER_HEADER, USAGE_HEADER
from crosslogic.errors import Unavailable
from crosslogic.extauthz.decision import INSUFFICIENT_QUOTA, Allow
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.gcra import Decision
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_JSON = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
    append_action=_OVERWRITE,
)
UNAVAILABLE = ApiError(
    503,
    "Authorization is temporarily unavailable; retry shortly.",
    "service_unavailable",
    "authorization_unavailable",
)
# A bug of ours met by some request: refused (never passed, never Envoy's retryable 503 for
# an unreachable service), and the request did not reach a node.
INTERNAL = ApiError(
    500,
    "The request could not be authorised because of an internal error; it was not processed.",
    "server_error",
    "internal_error",
)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


# The official SDKs retry a 429 unless told not to: a quota refusal will not pass on retry.
_NO_RETRY = (("x-should-retry", "false"),)


def denied(
    error: ApiError, *, headers: Sequence[tuple[str, str]] = ()
) -> external_auth_pb2.CheckResponse:
    code = 16 if error.status == 401 else 7  # UNAUTHENTICATED / PERMISSION_DENIED
    if error.code == INSUFFICIENT_QUOTA:
        headers = (*headers, *_NO_RETRY)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=error.code or error.type),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=[_JSON, *(_header(k, v) for k, v in headers)],
            body=error.body().decode(),
        ),
    )


def with_limits(
    base: external_auth_pb2.CheckResponse, limits: Decision
) -> external_auth_pb2.CheckResponse:
    """The cached allow response plus this request's rate-limit headers and reservation."""
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(base)
    for key, value in limits.headers():
        response.ok_response.response_headers_to_add.append(_header(key, value))
    reservation = limits.reservation()
    if reservation is not None:
        response.dynamic_metadata.update({TOKEN_RESERVATION: reservation})
    return response


def with_prefix_hash(
    base: external_auth_pb2.CheckResponse, prefix_hash: str
) -> external_auth_pb2.CheckResponse:
    """The cached allow response plus the header Envoy's hash policy reads (prefix affinity)."""
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(base)
    response.ok_response.headers.append(_header(routing.PREFIX_HASH_HEADER, prefix_hash))
    return response


def allowed(decision: Allow) -> external_auth_pb2.CheckResponse:
    key = decision.key
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "tenant_id": key.tenant_id,
            "environment_id": key.environment_id,
            "api_key_id": key.api_key_id,
            "key_id": key.key_id,
            "plan": key.plan,
            # strings: Envoy copies them into rate-limit descriptor entries as they are
            "tokens": str(decision.tokens),
            "prompt_estimate": decision.prompt_tokens,
        }
    )
    headers = []
    if key.rate_limit_rpm is not None:
        metadata.update({"key_rpm": str(key.rate_limit_rpm)})
    if decision.model is not None:
        metadata.update({"model": decision.model.name, "model_id": decision.model.id})
        if decision.force_include_usage:
            metadata.update({"force_include_usage": True})
        headers.append(_header(CLUSTER_HEADER, decision.cluster or decision.model.cluster))
        headers.append(_header(USAGE_HEADER, "scan" if decision.scan_usage else "json"))
    else:
        allowed_models = key.allowed_models
        headers.append(
            _header(
                routing.ALLOWED_MODELS_HEADER,
                "*" if allowed_models is None else ",".join(sorted(allowed_models)),
            )
        )
        headers.append(_header(routing.TENANT_HEADER, key.tenant_id))
        regions = key.allowed_regions
        headers.append(
            _header(
                routing.ALLOWED_REGIONS_HEADER,
                "*" if regions is None else ",".join(sorted(regions)),
            )
        )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=headers, headers_to_remove=["authorization"]
        ),
        dynamic_metadata=metadata,
    )


def refusal(
    exc: Exception, *, unexpected: UnexpectedErrors
) -> tuple[str, external_auth_pb2.CheckResponse]:
    """The one place an exception becomes a denial: (decision outcome, response). A dependency
    that is down (:class:`~crosslogic.errors.Unavailable`: the key store, with no stale entry to
    serve) is a retryable 503; anything else is a bug of ours, counted and logged by
    ``unexpected``, and refused with a 500, never passed."""
    if isinstance(exc, Unavailable):
        log.error("refused, a dependency is unavailable: %s", exc)
        return "unavailable", denied(UNAVAILABLE)
    unexpected.record(exc)
    return "internal_error", denied(INTERNAL)
