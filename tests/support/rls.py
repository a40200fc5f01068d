"""Envoy rate-limit service requests, built as Envoy sends them."""

from __future__ import annotations

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2


def rls_request(entries: dict[str, str]) -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return rls_pb2.RateLimitRequest(
        domain="crosslogic",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key=k, value=v) for k, v in entries.items()]
            )
        ],
    )
