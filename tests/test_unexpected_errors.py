"""The one catch-all of each request edge: an exception nobody mapped is refused (never
Envoy's fail-open, never its retryable 503), counted, and logged in one rate-limited line."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import CollectorRegistry

from crosslogic.admin.errors import error_middleware
from crosslogic.extauthz import keys
from crosslogic.extauthz.authorizer import Authorizer, AuthzMetrics
from crosslogic.extauthz.service import AuthorizationService
from crosslogic.extauthz.store import KeyCache
from crosslogic.ratelimit.service import RateLimitService
from crosslogic.unexpected import UnexpectedErrors
from tests.support.rls import rls_request

LOG = logging.getLogger("tests.edges")


def unexpected(registry: CollectorRegistry, clock: list[float] | None = None) -> UnexpectedErrors:
    now = clock if clock is not None else [0.0]
    return UnexpectedErrors(edge="t", registry=registry, logger=LOG, clock=lambda: now[0])


def count(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "crosslogic_unexpected_errors_total"
    )


def fail(errors: UnexpectedErrors) -> None:
    try:
        int(float("inf"))
    except OverflowError as exc:
        errors.record(exc)


def test_one_log_line_per_place_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    clock = [100.0]
    errors = unexpected(registry, clock)
    for _ in range(5):
        fail(errors)
    assert count(registry) == 5
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    clock[0] += 60
    fail(errors)
    assert len(caplog.records) == 2 and "4 more" in caplog.records[1].getMessage()


class BrokenLimiter:
    async def decide(self, who: Any, *, tokens: int) -> None:
        raise OverflowError("int too large to convert")


def test_rate_limit_service_refuses_what_it_chokes_on() -> None:
    registry = CollectorRegistry()
    service = RateLimitService(BrokenLimiter(), unexpected=unexpected(registry))  # type: ignore[arg-type]
    request = rls_request({"api_key_id": "a", "tokens": "5"})
    response = asyncio.run(service.ShouldRateLimit(request, None))
    assert response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT  # not Envoy's pass
    assert json.loads(response.raw_body)["error"]["code"] == "rate_limit_internal_error"
    assert count(registry) == 1


def test_authz_service_refuses_what_it_chokes_on() -> None:
    async def fetch(key_hash: bytes) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    registry = CollectorRegistry()
    service = AuthorizationService(
        Authorizer(
            cache=KeyCache(fetch, ttl=1.0),  # type: ignore[arg-type]
            metrics=AuthzMetrics(registry),
        )
    )
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.headers["authorization"] = f"Bearer {keys.generate().plaintext}"
    http.path, http.method = "/v1/chat/completions", "POST"
    response = asyncio.run(service.Check(request, None))
    assert response.denied_response.status.code == 500  # refused; not 503, which SDKs retry
    assert json.loads(response.denied_response.body)["error"]["code"] == "internal_error"
    assert count(registry) == 1


def test_admin_errors_are_openai_json() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise KeyError("x")

    async def run() -> list[tuple[int, str, Any]]:
        app = web.Application(middlewares=[error_middleware(unexpected(CollectorRegistry()))])
        app.router.add_get("/boom", boom)
        async with TestClient(TestServer(app)) as client:
            out = []
            for method, path in (("GET", "/boom"), ("GET", "/nowhere"), ("POST", "/boom")):
                response = await client.request(method, path)
                out.append((response.status, response.content_type, await response.json()))
            return out

    for status, content_type, body in asyncio.run(run()):
        assert status in (500, 404, 405) and content_type == "application/json"
        assert set(body["error"]) == {"message", "type", "param", "code"}
