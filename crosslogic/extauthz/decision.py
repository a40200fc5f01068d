"""The authorisation decision, pure: request facts + key record + catalog -> allow or deny.

No I/O here; the gRPC edge feeds it what the cache or Postgres knew. Every denial carries
the HTTP status and OpenAI error that Envoy returns verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from crosslogic.openai_errors import ApiError, invalid_request

# Inference endpoints: a JSON body naming the model is required.
MODEL_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
STREAMING_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Model:
    id: int
    name: str

    @property
    def cluster(self) -> str:
        return f"model_{self.id}"


@dataclass(frozen=True)
class Allow:
    key: KeyRecord
    model: Model | None  # None on endpoints that name no model (GET /v1/models)
    force_include_usage: bool
    stream: bool = False  # the node will answer with SSE
    scan_usage: bool = False  # read usage chunk by chunk: streams, and bodies that can be big
    tokens: int = 0  # estimated prompt + completion tokens: reserved against token limits
    prompt_tokens: int = 0  # the prompt part of that estimate


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_api_key")


MISSING_KEY = unauthorized(
    "Missing or malformed API key. Send it as 'Authorization: Bearer <key>'."
)
UNKNOWN_KEY = unauthorized("Incorrect API key provided.")


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


def endpoint_of(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/")


def decide(
    *,
    key: KeyRecord,
    method: str,
    path: str,
    body: bytes,
    catalog: dict[str, Model],
    now: datetime,
) -> Allow | ApiError:
    refused = check_key(key, now=now)
    if refused is not None:
        return refused
    endpoint = endpoint_of(path)
    if endpoint not in MODEL_ENDPOINTS:
        return Allow(key=key, model=None, force_include_usage=False)
    if method != "POST":
        return ApiError(
            405, f"{endpoint} only accepts POST.", "invalid_request_error", "method_not_allowed"
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return invalid_request("The request body is not valid JSON.", code="invalid_json")
    if not isinstance(payload, dict):
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
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
    model = catalog.get(name)
    if model is None:
        return ApiError(
            404,
            f"The model '{name}' does not exist.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    if key.allowed_models is not None and name not in key.allowed_models:
        return ApiError(
            403,
            f"This API key is not allowed to use the model '{name}'.",
            "permission_denied",
            "model_not_allowed",
            "model",
        )
    return Allow(
        key=key,
        model=model,
        force_include_usage=_needs_usage(endpoint, payload),
        stream=stream,
        scan_usage=stream or endpoint == "/v1/embeddings",
        tokens=estimate_tokens(endpoint, payload),
        prompt_tokens=estimate_prompt(endpoint, payload),
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
        return max(1, _text_size(payload.get("input")) // CHARS_PER_TOKEN)
    source = (
        payload.get("messages") if endpoint == "/v1/chat/completions" else payload.get("prompt")
    )
    return _text_size(source) // CHARS_PER_TOKEN + 1


def estimate_tokens(endpoint: str, payload: dict[str, object]) -> int:
    """Tokens to reserve before the request: prompt size plus the completion budget."""
    prompt = estimate_prompt(endpoint, payload)
    if endpoint == "/v1/embeddings":
        return prompt
    budget = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
        budget = DEFAULT_MAX_TOKENS.get(endpoint, 16)
    choices = payload.get("n")
    count = (
        choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 0 else 1
    )
    return prompt + budget * count
