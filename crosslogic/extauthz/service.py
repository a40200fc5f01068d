"""The gRPC edge of ext_authz: CheckRequest -> decision -> CheckResponse.

Maps protos to domain values and back; ``Check`` is the one place where an error becomes a
client answer (through :func:`~crosslogic.extauthz.responses.refusal`). Allow responses are
cached per decision so the hot path builds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic.contracts.journal import (
    BOOT_HEADER,
    DEFAULT_GATEWAY,
    GATEWAY_HEADER,
    Admission,
    encode,
)
from crosslogic.contracts.routing import REGION_HEADER
from crosslogic.extauthz import keys
from crosslogic.extauthz.decision import (
    MISSING_KEY,
    UNKNOWN_KEY,
    Allow,
    KeyRecord,
    Model,
    decide,
    endpoint_of,
)
from crosslogic.extauthz.responses import (
    allowed,
    denied,
    refusal,
    with_limits,
    with_prefix_hash,
)
from crosslogic.extauthz.store import KeyCache
from crosslogic.journal.writer import AdmissionWriter
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.config import Identity
from crosslogic.ratelimit.limiter import UNAVAILABLE as RL_UNAVAILABLE
from crosslogic.ratelimit.limiter import RateLimiter
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)


class AuthzMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "crosslogic_authz_decisions_total",
            "ext_authz decisions by outcome",
            ["outcome"],
            registry=registry,
        )
        self.cache = Counter(
            "crosslogic_authz_key_cache_total", "key cache lookups", ["result"], registry=registry
        )
        self.latency = Histogram(
            "crosslogic_authz_check_seconds",
            "ext_authz check latency",
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
        )
        self.unexpected = UnexpectedErrors(edge="extauthz", registry=registry, logger=log)


def identity_of(key: KeyRecord) -> Identity:
    return Identity(
        tenant_id=key.tenant_id,
        environment_id=key.environment_id,
        api_key_id=key.api_key_id,
        plan=key.plan,
        key_rpm=key.rate_limit_rpm,
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Envoy's ext_authz Check, answered from the in-process key cache and model catalog."""

    def __init__(
        self,
        *,
        cache: KeyCache,
        metrics: AuthzMetrics,
        limiter: RateLimiter | None = None,
        journal: AdmissionWriter | None = None,
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._limiter = limiter  # set when RATELIMIT_AT=authz: limits decided here too
        self._journal = journal  # every admitted model request, before Envoy hears "allow"
        self.catalog: dict[str, Model] = {}
        self.regions: frozenset[str] = frozenset()  # region codes: a request may name one
        self._responses: dict[Allow, external_auth_pb2.CheckResponse] = {}

    async def Check(  # noqa: N802 (gRPC method name)
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        try:
            outcome, response = await self._check(request.attributes.request.http, context)
        except Exception as exc:  # the one catch of this edge: see responses.refusal
            outcome, response = refusal(exc, unexpected=self._metrics.unexpected)
        self._metrics.decisions.labels(outcome).inc()
        self._metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _check(
        self, http: object, context: grpc.aio.ServicerContext
    ) -> tuple[str, external_auth_pb2.CheckResponse]:
        headers = http.headers  # type: ignore[attr-defined]
        token = keys.bearer_token(headers.get("authorization", ""))
        if token is None or not keys.looks_valid(token):
            return "missing_key", denied(MISSING_KEY)
        key_hash = keys.hash_key(token)
        hit = self._cache.cached(key_hash) is not None
        self._metrics.cache.labels("hit" if hit else "miss").inc()
        record = await self._cache.get(key_hash)  # Unavailable: the database is down
        if record is None:
            return "unknown_key", denied(UNKNOWN_KEY)
        decision = decide(
            key=record,
            method=http.method,  # type: ignore[attr-defined]
            path=http.path,  # type: ignore[attr-defined]
            body=http.raw_body,  # type: ignore[attr-defined]
            catalog=self.catalog,
            now=datetime.now(UTC),
            regions=self.regions,
            requested_region=headers.get(REGION_HEADER),
        )
        if isinstance(decision, ApiError):
            log.debug("denied key %s: %s", record.key_id, decision.code)
            return decision.code or decision.type, denied(decision)
        self._cache.touch(record.api_key_id, at=time.time())
        # Allow is a frozen value holding the key record: equal decisions share a response
        # (the prefix hash, different for most prompts, is added to a copy)
        prefix = decision.prefix_hash
        shared = decision if prefix is None else replace(decision, prefix_hash=None)
        response = self._responses.get(shared)
        if response is None:
            if len(self._responses) > 50_000:
                self._responses.clear()
            response = allowed(shared)
            self._responses[shared] = response
        if prefix is not None:
            response = with_prefix_hash(response, prefix)
        journal = self._journal if decision.model is not None else None
        # Envoy's x-request-id, the access log's request_id (http.id is an internal stream id)
        request_id = headers.get("x-request-id", "")
        boot, gateway = origin_of(context) if journal is not None else (None, DEFAULT_GATEWAY)
        if self._limiter is None:
            if journal is not None:
                await journal.admit(boot, request_id, admission(decision, http), gateway=gateway)
            return "allowed", response
        deciding = self._limiter.decide(identity_of(record), tokens=decision.tokens)
        if journal is None:
            limits = await deciding
            journaled = False
        else:
            # issued in one event-loop turn, so both leave in one write: one round trip
            limits, journaled = await asyncio.gather(
                deciding,
                journal.admit(boot, request_id, admission(decision, http), gateway=gateway),
            )
        if limits is None or not limits.allowed:
            if journal is not None and journaled and boot:
                await journal.withdraw(boot, request_id)
            if limits is None:
                retry = [("retry-after", "1")]
                return "rate_limit_unavailable", denied(RL_UNAVAILABLE, headers=retry)
            return "rate_limited", denied(limits.error(), headers=limits.headers())
        return "allowed", with_limits(response, limits)


def origin_of(context: grpc.aio.ServicerContext) -> tuple[str | None, str]:
    """The boot id of the Envoy process asking and its gateway (its ext_authz
    initial_metadata; an Envoy configured before gateways were named sends no gateway)."""
    found = dict(context.invocation_metadata() or ())
    boot = found.get(BOOT_HEADER)
    gateway = found.get(GATEWAY_HEADER) or DEFAULT_GATEWAY
    return (str(boot) if boot else None), str(gateway)


def admission(decision: Allow, http: object) -> str:
    """The journal record of an admitted model request."""
    assert decision.model is not None
    key = decision.key
    return encode(
        Admission(
            tenant_id=key.tenant_id,
            environment_id=key.environment_id,
            api_key_id=key.api_key_id,
            model_id=decision.model.id,
            endpoint=endpoint_of(http.path) or "",  # type: ignore[attr-defined]
            streamed=decision.stream,
            prompt_estimate=decision.prompt_tokens,
            token_estimate=decision.tokens,
            admitted_at=datetime.now(UTC),
        )
    )
