"""The gRPC edge of the rate-limit service: Envoy's RateLimitRequest -> RateLimiter -> answer.

Maps descriptors to an identity and a token estimate, and a Decision to Envoy's response:
OpenAI's rate-limit headers, the 429 body, and the token reservation as dynamic metadata
(the access log carries it to billing, which settles it to the real usage).
"""

from __future__ import annotations

import re

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import struct_pb2

from crosslogic.contracts.metadata import TOKEN_RESERVATION
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import Identity
from crosslogic.ratelimit.gcra import MAX_COST, Decision
from crosslogic.ratelimit.limiter import UNAVAILABLE, RateLimiter
from crosslogic.unexpected import UnexpectedErrors

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


# A bug of ours met by some request: refused, since Envoy would let an error through
# (failure_mode_deny: false is for the service being unreachable, not for a request it chokes
# on). The rate-limit protocol answers 429; the code tells it apart from a real limit.
INTERNAL = ApiError(
    429,
    "The rate limit could not be decided because of an internal error; retry shortly.",
    "server_error",
    "rate_limit_internal_error",
)
_DIGITS = re.compile(r"[0-9]{1,18}")


def parse_count(text: str | None, *, ceiling: int) -> int | None:
    """A non-negative integer written by ext_authz, at most ``ceiling``; None if it is not
    one. Never float(): "1e999" would be inf, and int(inf) raises."""
    if text is None or not _DIGITS.fullmatch(text):
        return None
    return min(int(text), ceiling)


def request_facts(request: rls_pb2.RateLimitRequest) -> tuple[Identity, int] | None:
    """Who asks and the token estimate, from the descriptor ext_authz's metadata filled.
    Values are ext_authz's, but read as untrusted: an unreadable estimate reserves the
    maximum (it can only make a refusal likelier), an unreadable key limit is ignored."""
    for descriptor in request.descriptors:
        entries = {e.key: e.value for e in descriptor.entries}
        if "api_key_id" not in entries:
            continue
        tokens = parse_count(entries.get("tokens", "0"), ceiling=MAX_COST)
        key_rpm = parse_count(entries.get("key_rpm"), ceiling=MAX_COST)
        return Identity(
            tenant_id=entries.get("tenant_id", ""),
            environment_id=entries.get("environment_id", ""),
            api_key_id=entries["api_key_id"],
            plan=entries.get("plan", "default"),
            key_rpm=key_rpm or None,  # 0 would be a limit of nothing per minute: not a limit
        ), MAX_COST if tokens is None else tokens
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
        metadata.update({TOKEN_RESERVATION: reservation})
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def refused(error: ApiError) -> rls_pb2.RateLimitResponse:
    response = rls_pb2.RateLimitResponse(
        overall_code=OVER_LIMIT,
        response_headers_to_add=_headers(
            [("retry-after", "1"), ("content-type", "application/json")]
        ),
    )
    response.raw_body = error.body()
    return response


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Envoy's ShouldRateLimit: every layer of a request decided in one Redis round trip."""

    def __init__(self, limiter: RateLimiter, *, unexpected: UnexpectedErrors) -> None:
        self._limiter = limiter
        self._unexpected = unexpected

    async def ShouldRateLimit(  # noqa: N802 (gRPC method name)
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        try:
            return await self._should_rate_limit(request)
        except Exception as exc:  # the one catch-all of this edge: see INTERNAL
            self._unexpected.record(exc)
            return refused(INTERNAL)

    async def _should_rate_limit(
        self, request: rls_pb2.RateLimitRequest
    ) -> rls_pb2.RateLimitResponse:
        facts = request_facts(request)
        if facts is None:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        identity, tokens = facts
        decision = await self._limiter.decide(identity, tokens=tokens)
        return refused(UNAVAILABLE) if decision is None else to_response(decision)
