"""The authorisation decision, pure: request facts + key record + catalog -> allow or deny.

No I/O here; the gRPC edge feeds it what the cache or Postgres knew. Every denial carries
the HTTP status and OpenAI error that Envoy returns verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from crosslogic.contracts.quota import CREDITS_EXHAUSTED
from crosslogic.contracts.quota import MESSAGES as QUOTA_MESSAGES
from crosslogic.contracts.routing import PREFIX_AFFINITY
from crosslogic.contracts.routing import Model as Model  # re-exported: the catalog's entries
from crosslogic.extauthz import placement
from crosslogic.extauthz.request_body import (
    MAX_CHOICES,
    MAX_COMPLETION_TOKENS,
    MAX_TOKEN_ESTIMATE,
    bounded_int,
    parse_object,
)
from crosslogic.openai_errors import ApiError, invalid_request

# Inference endpoints: a JSON body naming the model is required.
MODEL_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
STREAMING_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MODELS_ENDPOINT = "/v1/models"
# the same expression as the /v1/models route in envoy/envoy.yaml
_MODELS_PATH = re.compile(r"/v1/models(/[^/]+)?")
USAGE_ENDPOINT = "/v1/usage"  # the key's tenant's own usage report
# read-only endpoints the control plane answers, for any valid key
CONTROL_PLANE_ENDPOINTS = (MODELS_ENDPOINT, USAGE_ENDPOINT)
INSUFFICIENT_QUOTA = "insufficient_quota"  # OpenAI's error type and code
UNKNOWN_ENDPOINT = ApiError(404, "Unknown endpoint.", "invalid_request_error", "unknown_url")


@dataclass(frozen=True, slots=True)  # slots: a million of them live in the key cache
class KeyRecord:
    """What authorisation needs to know about one API key and its parents."""

    api_key_id: str
    key_id: str
    tenant_id: str
    environment_id: str
    key_status: str
    tenant_status: str
    environment_status: str
    expires_at: datetime | None
    allowed_models: frozenset[str] | None
    rate_limit_rpm: int | None
    plan: str = "default"  # the tenant's plan: its default rate limits
    quota: str | None = None  # why the tenant's quota is used up (billing sets it), or None
    allowed_regions: frozenset[str] | None = None  # served only there (None: anywhere)
    default_region: str | None = None  # preferred when the request names no region


@dataclass(frozen=True)
class Allow:
    key: KeyRecord
    model: Model | None  # None on endpoints that name no model (GET /v1/models, /v1/usage)
    force_include_usage: bool
    stream: bool = False  # the node will answer with SSE
    scan_usage: bool = False  # read usage chunk by chunk: streams, and bodies that can be big
    tokens: int = 0  # estimated prompt + completion tokens: reserved against token limits
    prompt_tokens: int = 0  # the prompt part of that estimate
    cluster: str = ""  # the model's cluster chosen for the request's region (placement)
    prefix_hash: str | None = None  # prefix-affinity models: what Envoy's hash policy hashes


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_api_key")


MISSING_KEY = unauthorized(
    "Missing or malformed API key. Send it as 'Authorization: Bearer <key>'."
)
UNKNOWN_KEY = unauthorized("Incorrect API key provided.")


def insufficient_quota(reason: str) -> ApiError:
    """OpenAI's quota error: a 429 the SDKs must not retry (see responses.denied)."""
    message = QUOTA_MESSAGES.get(reason, QUOTA_MESSAGES[CREDITS_EXHAUSTED])
    return ApiError(429, message, INSUFFICIENT_QUOTA, INSUFFICIENT_QUOTA)


def check_key(key: KeyRecord, *, now: datetime) -> ApiError | None:
    if key.key_status != "active":
        return unauthorized("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        return unauthorized("This API key has expired.")
    if key.tenant_status != "active":
        return ApiError(
            403, "This organization is suspended.", "permission_denied", "organization_suspended"
        )
    if key.environment_status != "active":
        return ApiError(
            403, "This environment is disabled.", "permission_denied", "environment_disabled"
        )
    return None


def endpoint_of(path: str) -> str | None:
    """The API endpoint a request path names, or None. Envoy's routes match exactly this set
    (exact paths, query ignored; Envoy has already merged slashes and resolved dot segments),
    so a path that is not an endpoint reaches neither a node nor the bill."""
    path = path.split("?", 1)[0]
    if path in MODEL_ENDPOINTS:
        return path
    if _MODELS_PATH.fullmatch(path):
        return MODELS_ENDPOINT
    if path == USAGE_ENDPOINT:
        return USAGE_ENDPOINT
    return None


def decide(
    *,
    key: KeyRecord,
    method: str,
    path: str,
    body: bytes,
    catalog: dict[str, Model],
    now: datetime,
    regions: frozenset[str] = frozenset(),
    requested_region: str | None = None,
) -> Allow | ApiError:
    refused = check_key(key, now=now)
    if refused is not None:
        return refused
    endpoint = endpoint_of(path)
    if endpoint is None:
        return UNKNOWN_ENDPOINT
    if endpoint in CONTROL_PLANE_ENDPOINTS:
        if method not in ("GET", "HEAD"):
            return _wrong_method(endpoint, "GET")
        return Allow(key=key, model=None, force_include_usage=False)
    if method != "POST":
        return _wrong_method(endpoint, "POST")
    payload = parse_object(body)
    if isinstance(payload, ApiError):
        return payload
    name = payload.get("model")
    if not isinstance(name, str) or not name:
        return invalid_request(
            "You must provide a model parameter.", param="model", code="missing_model"
        )
    raw_stream = payload.get("stream", False)
    if raw_stream is not None and not isinstance(raw_stream, bool):
        # a server might read 1 or "true" as true: the stream would escape usage capture
        return invalid_request("'stream' must be a boolean.", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return invalid_request("'stream_options' must be an object.", param="stream_options")
    stream = raw_stream is True and endpoint in STREAMING_ENDPOINTS
    tokens = estimate_tokens(endpoint, payload)
    if isinstance(tokens, ApiError):
        return tokens
    model = catalog.get(name)
    if model is None:
        shown = name if len(name) <= 256 else name[:256] + "..."
        return ApiError(
            404,
            f"The model '{shown}' does not exist.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if key.quota is not None:  # after validation: a bad request is the client's error first
        return insufficient_quota(key.quota)
    if key.allowed_models is not None and name not in key.allowed_models:
        return ApiError(
            403,
            f"This API key is not allowed to use the model '{name}'.",
            "permission_denied",
            "model_not_allowed",
            "model",
        )
    cluster = placement.cluster_for(
        model,
        requested=requested_region,
        allowed=key.allowed_regions,
        default=key.default_region,
        regions=regions,
    )
    if isinstance(cluster, ApiError):
        return cluster
    return Allow(
        key=key,
        model=model,
        cluster=cluster,
        prefix_hash=(
            placement.prefix_hash(endpoint, payload) if model.strategy == PREFIX_AFFINITY else None
        ),
        force_include_usage=_needs_usage(endpoint, payload),
        stream=stream,
        scan_usage=stream or endpoint == "/v1/embeddings",
        tokens=tokens,
        prompt_tokens=estimate_prompt(endpoint, payload),
    )


def _wrong_method(endpoint: str, allowed: str) -> ApiError:
    return ApiError(
        405, f"{endpoint} only accepts {allowed}.", "invalid_request_error", "method_not_allowed"
    )


def _needs_usage(endpoint: str, payload: dict[str, object]) -> bool:
    """A streaming request that did not ask for the usage chunk: we ask for it (billing)."""
    if endpoint not in STREAMING_ENDPOINTS or payload.get("stream") is not True:
        return False
    options = payload.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


# Completion budget assumed when a request sets none: OpenAI's /v1/completions default is 16;
# chat has no default, so we reserve a generous one (settled to the real count afterwards).
DEFAULT_MAX_TOKENS = {"/v1/completions": 16, "/v1/chat/completions": 1024}
CHARS_PER_TOKEN = 4  # a cheap upper-ish estimate; the real count settles it


def _text_size(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_size(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def estimate_prompt(endpoint: str, payload: dict[str, object]) -> int:
    if endpoint == "/v1/embeddings":
        size = max(1, _text_size(payload.get("input")) // CHARS_PER_TOKEN)
    else:
        source = (
            payload.get("messages") if endpoint == "/v1/chat/completions" else payload.get("prompt")
        )
        size = _text_size(source) // CHARS_PER_TOKEN + 1
    return min(size, MAX_TOKEN_ESTIMATE)


def estimate_tokens(endpoint: str, payload: dict[str, object]) -> int | ApiError:
    """Tokens to reserve before the request: prompt size plus the completion budget, never
    above MAX_TOKEN_ESTIMATE. A budget or n out of bounds is the client's error (400): read
    leniently, it would reserve nothing or overflow the counters."""
    prompt = estimate_prompt(endpoint, payload)
    if endpoint == "/v1/embeddings":
        return prompt
    budgets = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = bounded_int(payload, name, low=1, high=MAX_COMPLETION_TOKENS)
        if isinstance(value, ApiError):
            return value
        budgets.append(value)
    # the node honours max_completion_tokens first; reserve the larger in case it does not
    given = [b for b in budgets if b is not None]
    budget = max(given) if given else DEFAULT_MAX_TOKENS.get(endpoint, 16)
    count = bounded_int(payload, "n", low=1, high=MAX_CHOICES)
    if isinstance(count, ApiError):
        return count
    return min(prompt + budget * (count or 1), MAX_TOKEN_ESTIMATE)
