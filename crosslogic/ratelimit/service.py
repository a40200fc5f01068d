"""The gRPC edge of the rate-limit service: Envoy's RateLimitRequest -> RateLimiter -> answer.

Maps descriptors to an identity and a token estimate, and a Decision to Envoy's response:
OpenAI's rate-limit headers, the 429 body, and the token reservation as dynamic metadata
(the access log carries it to billing, which settles it to the real usage).
"""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import struct_pb2

from crosslogic.ratelimit.config import Identity
from crosslogic.ratelimit.decider import UNAVAILABLE, RateLimiter
from crosslogic.ratelimit.limiter import Decision

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


def request_facts(request: rls_pb2.RateLimitRequest) -> tuple[Identity, int] | None:
    """Who asks and the token estimate, from the descriptor ext_authz's metadata filled."""
    for descriptor in request.descriptors:
        entries = {e.key: e.value for e in descriptor.entries}
        if "api_key_id" not in entries:
            continue
        try:
            tokens = int(float(entries.get("tokens", "0")))
            key_rpm = int(entries["key_rpm"]) if entries.get("key_rpm") else None
        except ValueError:
            tokens, key_rpm = 0, None
        return Identity(
            tenant_id=entries.get("tenant_id", ""),
            environment_id=entries.get("environment_id", ""),
            api_key_id=entries["api_key_id"],
            plan=entries.get("plan", "default"),
            key_rpm=key_rpm,
        ), max(tokens, 0)
    return None


def _headers(pairs: list[tuple[str, str]]) -> list[base_pb2.HeaderValue]:
    return [base_pb2.HeaderValue(key=k, value=v) for k, v in pairs]


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OK if decision.allowed else OVER_LIMIT,
        response_headers_to_add=_headers(decision.headers()),
    )
    if not decision.allowed:
        response.raw_body = decision.error().body()
        response.response_headers_to_add.add(key="content-type", value="application/json")
    reservation = decision.reservation()
    if reservation is not None:
        metadata = struct_pb2.Struct()
        metadata.update({"token_reservation": reservation})
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def refused_unavailable() -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OVER_LIMIT,
        response_headers_to_add=_headers(
            [("retry-after", "1"), ("content-type", "application/json")]
        ),
    )
    response.raw_body = UNAVAILABLE.body()
    return response


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Envoy's ShouldRateLimit: every layer of a request decided in one Redis round trip."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def ShouldRateLimit(  # noqa: N802 (gRPC method name)
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        facts = request_facts(request)
        if facts is None:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        identity, tokens = facts
        decision = await self._limiter.decide(identity, tokens=tokens)
        return refused_unavailable() if decision is None else to_response(decision)
