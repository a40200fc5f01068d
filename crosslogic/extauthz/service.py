"""The gRPC edge of ext_authz: CheckRequest -> Authorizer -> CheckResponse.

Maps protos to the protocol-neutral input and the verdict back to a proto. Allow responses
are cached per decision so the hot path builds nothing.
"""

from __future__ import annotations

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from crosslogic.contracts.journal import BOOT_HEADER, DEFAULT_GATEWAY, GATEWAY_HEADER
from crosslogic.contracts.routing import REGION_HEADER
from crosslogic.extauthz.authorizer import Authorizer
from crosslogic.extauthz.decision import Allow
from crosslogic.extauthz.responses import (
    allowed,
    refusal_response,
    with_limits,
    with_prefix_hash,
)
from crosslogic.extauthz.verdict import Admitted, CheckInput

CACHED_ANSWERS = 50_000  # allow answers kept per process (one per key and model, roughly)


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Envoy's ext_authz Check over gRPC."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        self._responses: dict[Allow, external_auth_pb2.CheckResponse] = {}

    async def Check(  # noqa: N802 (gRPC method name)
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = http.headers
        boot, gateway = origin_of(context)
        _, verdict = await self.authorizer.check(
            CheckInput(
                method=http.method,
                path=http.path,
                authorization=headers.get("authorization", ""),
                # Envoy's x-request-id, the access log's (http.id is an internal stream id)
                request_id=headers.get("x-request-id", ""),
                body=http.raw_body,
                region=headers.get(REGION_HEADER),
                boot=boot,
                gateway=gateway,
            )
        )
        if not isinstance(verdict, Admitted):
            return refusal_response(verdict)
        response = self._responses.get(verdict.decision)
        if response is None:
            if len(self._responses) > CACHED_ANSWERS:
                self._responses.clear()
            response = allowed(verdict.decision)
            self._responses[verdict.decision] = response
        if verdict.prefix_hash is not None:
            response = with_prefix_hash(response, verdict.prefix_hash)
        if verdict.limits is not None:
            response = with_limits(response, verdict.limits)
        return response


def origin_of(context: grpc.aio.ServicerContext | None) -> tuple[str | None, str]:
    """The boot id of the Envoy process asking and its gateway (its ext_authz
    initial_metadata; an Envoy configured before gateways were named sends no gateway)."""
    found = dict((context.invocation_metadata() if context is not None else None) or ())
    boot = found.get(BOOT_HEADER)
    gateway = found.get(GATEWAY_HEADER) or DEFAULT_GATEWAY
    return (str(boot) if boot else None), str(gateway)
