"""The request-time decision of ext_authz, one for both protocols: CheckInput -> Outcome.

Key (in-process cache, Postgres on a miss), the pure decision, and with RATELIMIT_AT=authz
the rate limiter and the admission journal in one Redis write. :meth:`Authorizer.start`
answers without an await when it can (no key, a cached key refused, an allow that needs no
Redis): the HTTP edge then answers from its parser callback, with no task per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from crosslogic import logs
from crosslogic.contracts.journal import Admission, encode
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
from crosslogic.extauthz.store import KeyCache
from crosslogic.extauthz.verdict import Admitted, CheckInput, Outcome, refusal, refused
from crosslogic.journal.writer import AdmissionWriter
from crosslogic.metrics import Tally, Timings
from crosslogic.ratelimit.config import Identity
from crosslogic.ratelimit.limiter import UNAVAILABLE as RL_UNAVAILABLE
from crosslogic.ratelimit.limiter import RateLimiter
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)

Pending = Coroutine[Any, Any, Outcome]


class AuthzMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # counted on every request: tallied in process (crosslogic/metrics.py)
        self.decisions = Tally(
            Counter(
                "crosslogic_authz_decisions_total",
                "ext_authz decisions by outcome",
                ["outcome"],
                registry=registry,
            )
        )
        self.cache = Tally(
            Counter(
                "crosslogic_authz_key_cache_total",
                "key cache lookups",
                ["result"],
                registry=registry,
            )
        )
        self.latency = Timings(
            Histogram(
                "crosslogic_authz_check_seconds",
                "ext_authz check latency",
                registry=registry,
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
            )
        )
        self.unexpected = UnexpectedErrors(edge="extauthz", registry=registry, logger=log)

    def flush(self) -> None:
        for tallied in (self.decisions, self.cache, self.latency):
            tallied.flush()


def identity_of(key: KeyRecord) -> Identity:
    return Identity(
        tenant_id=key.tenant_id,
        environment_id=key.environment_id,
        api_key_id=key.api_key_id,
        plan=key.plan,
        key_rpm=key.rate_limit_rpm,
    )


class Authorizer:
    """Answers Envoy's authorization question from the key cache and the model catalog."""

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

    async def check(self, request: CheckInput) -> Outcome:
        step = self.start(request)
        return step if isinstance(step, tuple) else await step

    def start(self, request: CheckInput) -> Outcome | Pending:
        """The outcome if it is known without waiting, else a coroutine that finishes it.
        Either way, counted once and never raising (see verdict.refusal)."""
        started = time.perf_counter()
        # what this request logs says which it was (crosslogic.logs); a pending step runs in
        # a task, which copies the context it is created in
        logs.REQUEST_ID.set(request.request_id or None)
        try:
            step = self._begin(request)
        except Exception as exc:  # the one catch of the decision: see verdict.refusal
            step = self.refuse(exc)
        if isinstance(step, tuple):
            return self._counted(step, started)
        return self._finish(step, started)

    def refuse(self, exc: Exception) -> Outcome:
        """An edge's own failure to answer a verdict (see verdict.refusal)."""
        return refusal(exc, unexpected=self._metrics.unexpected)

    async def _finish(self, step: Pending, started: float) -> Outcome:
        try:
            outcome = await step
        except Exception as exc:
            outcome = self.refuse(exc)
        return self._counted(outcome, started)

    def _counted(self, outcome: Outcome, started: float) -> Outcome:
        self._metrics.decisions.inc(outcome[0])
        self._metrics.latency.observe(time.perf_counter() - started)
        return outcome

    def _begin(self, request: CheckInput) -> Outcome | Pending:
        token = keys.bearer_token(request.authorization)
        if token is None or not keys.looks_valid(token):
            return "missing_key", refused(MISSING_KEY)
        key_hash = keys.hash_key(token)
        entry = self._cache.cached(key_hash)
        self._metrics.cache.inc("miss" if entry is None else "hit")
        if entry is None:
            return self._looked_up(request, key_hash)
        return self._decide(request, entry.record)

    async def _looked_up(self, request: CheckInput, key_hash: bytes) -> Outcome:
        record = await self._cache.get(key_hash)  # Unavailable: the database is down
        step = self._decide(request, record)
        return step if isinstance(step, tuple) else await step

    def _decide(self, request: CheckInput, record: KeyRecord | None) -> Outcome | Pending:
        if record is None:
            return "unknown_key", refused(UNKNOWN_KEY)
        decision = decide(
            key=record,
            method=request.method,
            path=request.path,
            body=request.body,
            catalog=self.catalog,
            now=datetime.now(UTC),
            regions=self.regions,
            requested_region=request.region,
        )
        if not isinstance(decision, Allow):
            log.debug("denied key %s: %s", record.key_id, decision.code)
            return decision.code or decision.type, refused(decision)
        self._cache.touch(record.api_key_id, at=time.time())
        # Allow is a frozen value holding the key record: equal decisions share an answer
        # (the prefix hash, different for most prompts, travels beside it)
        prefix = decision.prefix_hash
        shared = decision if prefix is None else replace(decision, prefix_hash=None)
        journal = self._journal if decision.model is not None else None
        if self._limiter is None and journal is None:
            return "allowed", Admitted(shared, prefix)
        return self._admit(request, decision, Admitted(shared, prefix), journal)

    async def _admit(
        self,
        request: CheckInput,
        decision: Allow,
        admitted: Admitted,
        journal: AdmissionWriter | None,
    ) -> Outcome:
        boot, request_id = request.boot, request.request_id
        record = admission(decision, request.path) if journal is not None else ""
        if self._limiter is None:
            assert journal is not None
            await journal.admit(boot, request_id, record, gateway=request.gateway)
            return "allowed", admitted
        deciding = self._limiter.decide(identity_of(decision.key), tokens=decision.tokens)
        if journal is None:
            limits = await deciding
            journaled = False
        else:
            # both leave in one write, one round trip: the journal's task is scheduled before
            # the flush that the limiter's EVALSHA schedules (one task: gather made two)
            journaling = asyncio.ensure_future(
                journal.admit(boot, request_id, record, gateway=request.gateway)
            )
            limits = await deciding
            journaled = await journaling
        if limits is None or not limits.allowed:
            if journal is not None and journaled and boot:
                await journal.withdraw(boot, request_id)
            if limits is None:
                return "rate_limit_unavailable", refused(RL_UNAVAILABLE, [("retry-after", "1")])
            return "rate_limited", refused(
                limits.error(), limits.headers(), attributed=admitted.decision
            )
        return "allowed", replace(admitted, limits=limits)


def admission(decision: Allow, path: str) -> str:
    """The journal record of an admitted model request."""
    assert decision.model is not None
    key = decision.key
    return encode(
        Admission(
            tenant_id=key.tenant_id,
            environment_id=key.environment_id,
            api_key_id=key.api_key_id,
            model_id=decision.model.id,
            endpoint=endpoint_of(path) or "",
            streamed=decision.stream,
            prompt_estimate=decision.prompt_tokens,
            token_estimate=decision.tokens,
            admitted_at=datetime.now(UTC),
        )
    )
