"""What ext_authz is asked and what it answers, in no protocol's terms.

Both edges (gRPC: ``service.py``, HTTP: ``http_server.py``) map their request to a
:class:`CheckInput` and an :class:`Admitted` or :class:`Refused` back to their own answer;
:func:`refusal` is the one place where an exception becomes a client answer, for both.
No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crosslogic.contracts import routing
from crosslogic.contracts.journal import DEFAULT_GATEWAY
from crosslogic.contracts.metadata import FORCE_INCLUDE_USAGE, TOKEN_RESERVATION
from crosslogic.errors import Unavailable
from crosslogic.extauthz.decision import INSUFFICIENT_QUOTA, Allow
from crosslogic.openai_errors import ApiError
from crosslogic.ratelimit.gcra import Decision
from crosslogic.unexpected import UnexpectedErrors

log = logging.getLogger(__name__)

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
# The official SDKs retry a 429 unless told not to: a quota refusal will not pass on retry.
_NO_RETRY = (("x-should-retry", "false"),)


@dataclass(frozen=True, slots=True)
class CheckInput:
    """The little of a request that the decision reads."""

    method: str
    path: str
    authorization: str
    request_id: str  # Envoy's x-request-id: the access log's and the journal's key
    body: bytes
    region: str | None = None  # the crosslogic-region header, validated by the decision
    boot: str | None = None  # which Envoy process asks (its admission journal)
    gateway: str = DEFAULT_GATEWAY


@dataclass(frozen=True, slots=True)
class Admitted:
    """An allow. ``decision`` carries no prefix hash, so equal decisions are equal values and
    each edge caches its answer per decision; what is this request's own comes beside it."""

    decision: Allow
    prefix_hash: str | None = None
    limits: Decision | None = None  # set when ext_authz decided the rate limits


@dataclass(frozen=True, slots=True)
class Refused:
    """A denial: the status and OpenAI error body the client sees, and its headers.
    ``attributed``: the allow that a rate limit then refused; its identity goes into the
    denial's metadata, so that Envoy's access log records the refusal as it does when the
    rate-limit service refuses (billing counts it in the request metrics, bills nothing)."""

    error: ApiError
    headers: tuple[tuple[str, str], ...] = ()
    attributed: Allow | None = None


Verdict = Admitted | Refused
Outcome = tuple[str, Verdict]
"""The decision's label (the metric's ``outcome``) and the verdict."""


def refused(
    error: ApiError, headers: Sequence[tuple[str, str]] = (), *, attributed: Allow | None = None
) -> Refused:
    if error.code == INSUFFICIENT_QUOTA:
        headers = (*headers, *_NO_RETRY)
    return Refused(error, tuple(headers), attributed)


def refusal(exc: Exception, *, unexpected: UnexpectedErrors) -> Outcome:
    """The one place an exception becomes a denial: (decision outcome, refusal). A dependency
    that is down (:class:`~crosslogic.errors.Unavailable`: the key store, with no stale entry to
    serve) is a retryable 503; anything else is a bug of ours, counted and logged by
    ``unexpected``, and refused with a 500, never passed."""
    if isinstance(exc, Unavailable):
        log.error("refused, a dependency is unavailable: %s", exc)
        return "unavailable", Refused(UNAVAILABLE)
    unexpected.record(exc)
    return "internal_error", Refused(INTERNAL)


def metadata_of(decision: Allow) -> dict[str, Any]:
    """The dynamic metadata of an allow (namespace ``contracts.metadata.AUTHZ``)."""
    key = decision.key
    metadata: dict[str, Any] = {
        "tenant_id": key.tenant_id,
        "environment_id": key.environment_id,
        "api_key_id": key.api_key_id,
        "key_id": key.key_id,
        "plan": key.plan,
        # strings: Envoy copies them into rate-limit descriptor entries as they are
        "tokens": str(decision.tokens),
        "prompt_estimate": decision.prompt_tokens,
    }
    if key.rate_limit_rpm is not None:
        metadata["key_rpm"] = str(key.rate_limit_rpm)
    if decision.model is not None:
        metadata["model"] = decision.model.name
        metadata["model_id"] = decision.model.id
        if decision.force_include_usage:
            metadata[FORCE_INCLUDE_USAGE] = True
    return metadata


def limits_metadata(limits: Decision) -> dict[str, Any]:
    """This request's own metadata when ext_authz decided its limits: the reservation."""
    reservation = limits.reservation()
    return {} if reservation is None else {TOKEN_RESERVATION: reservation}


def upstream_headers(decision: Allow) -> list[tuple[str, str]]:
    """The headers an allow sets on the request Envoy routes (the client's key is removed)."""
    if decision.model is not None:
        return [
            (routing.CLUSTER_HEADER, decision.cluster or decision.model.cluster),
            (
                routing.USAGE_HEADER,
                routing.USAGE_SCAN if decision.scan_usage else routing.USAGE_JSON,
            ),
        ]
    key = decision.key
    models, regions = key.allowed_models, key.allowed_regions
    return [
        (routing.ALLOWED_MODELS_HEADER, "*" if models is None else ",".join(sorted(models))),
        (routing.TENANT_HEADER, key.tenant_id),
        (routing.ALLOWED_REGIONS_HEADER, "*" if regions is None else ",".join(sorted(regions))),
    ]
