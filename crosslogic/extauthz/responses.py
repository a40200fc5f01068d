"""The CheckResponses the gRPC edge answers Envoy with, built from a verdict.

A denial carries the HTTP status and OpenAI error body the client sees; an allow carries the
routing headers (which cluster, how Envoy reads usage) and the dynamic metadata that rate
limiting, billing and the access log read (both from ``verdict``, shared with the HTTP
edge). Allow responses are immutable protos, built once per decision and cached by the
servicer.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from crosslogic.contracts import routing
from crosslogic.extauthz.decision import Allow
from crosslogic.extauthz.verdict import (
    Refused,
    limits_metadata,
    metadata_of,
    refused,
    upstream_headers,
)
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.gcra import Decision

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_JSON = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
    append_action=_OVERWRITE,
)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def denied(
    error: ApiError, *, headers: Sequence[tuple[str, str]] = ()
) -> external_auth_pb2.CheckResponse:
    return refusal_response(refused(error, headers))


def refusal_response(refusal: Refused) -> external_auth_pb2.CheckResponse:
    error = refusal.error
    code = 16 if error.status == 401 else 7  # UNAUTHENTICATED / PERMISSION_DENIED
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=error.code or error.type),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=[_JSON, *(_header(k, v) for k, v in refusal.headers)],
            body=error.body().decode(),
        ),
    )
    if refusal.attributed is not None:
        response.dynamic_metadata.update(metadata_of(refusal.attributed))
    return response


def with_limits(
    base: external_auth_pb2.CheckResponse, limits: Decision
) -> external_auth_pb2.CheckResponse:
    """The cached allow response plus this request's rate-limit headers and reservation."""
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(base)
    for key, value in limits.headers():
        response.ok_response.response_headers_to_add.append(_header(key, value))
    extra = limits_metadata(limits)
    if extra:
        response.dynamic_metadata.update(extra)
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
    metadata = struct_pb2.Struct()
    metadata.update(metadata_of(decision))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[_header(k, v) for k, v in upstream_headers(decision)],
            headers_to_remove=["authorization"],
        ),
        dynamic_metadata=metadata,
    )
