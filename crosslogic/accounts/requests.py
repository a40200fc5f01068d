"""Validation of operator input, pure: JSON bodies -> typed requests or a 400 naming the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crosslogic.openai_errors import ApiError, invalid_request

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_GRACE_S = 30 * 86400


@dataclass(frozen=True)
class KeySpec:
    name: str
    expires_at: datetime | None
    allowed_models: list[str] | None
    allowed_regions: list[str] | None
    rate_limit_rpm: int | None


def _object(body: Any, allowed: set[str]) -> dict[str, Any] | ApiError:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return invalid_request("The body must be a JSON object.")
    extra = sorted(set(body) - allowed)
    if extra:
        return invalid_request(f"Unknown field(s): {', '.join(extra)}.", param=extra[0])
    return body


def _text(
    body: dict[str, Any],
    name: str,
    *,
    pattern: re.Pattern[str] | None = None,
    required: bool = True,
    default: str = "",
) -> str | ApiError:
    value = body.get(name, None if required else default)
    if not isinstance(value, str) or (required and not value) or len(value) > 200:
        return invalid_request(
            f"'{name}' must be a non-empty string of at most 200 characters.", param=name
        )
    if pattern is not None and not pattern.fullmatch(value):
        return invalid_request(f"'{name}' must match {pattern.pattern}.", param=name)
    return value


def tenant_name(body: Any) -> tuple[str, str] | ApiError:
    fields = _object(body, {"name", "plan"})
    if isinstance(fields, ApiError):
        return fields
    name = _text(fields, "name")
    plan = _text(fields, "plan", required=False, default="default")
    for value in (name, plan):
        if isinstance(value, ApiError):
            return value
    return name, plan  # type: ignore[return-value]


def environment_name(body: Any) -> str | ApiError:
    fields = _object(body, {"name"})
    if isinstance(fields, ApiError):
        return fields
    return _text(fields, "name", pattern=_NAME)


def status_change(body: Any, allowed: tuple[str, ...]) -> str | ApiError:
    fields = _object(body, {"status"})
    if isinstance(fields, ApiError):
        return fields
    status = fields.get("status")
    if status not in allowed:
        return invalid_request(f"'status' must be one of {', '.join(allowed)}.", param="status")
    return str(status)


def _names(fields: dict[str, Any], name: str) -> list[str] | ApiError | None:
    value = fields.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
    ):
        return invalid_request(
            f"'{name}' must be a non-empty list of names, or null for all.", param=name
        )
    return sorted(set(value))


def key_spec(body: Any, *, now: datetime) -> KeySpec | ApiError:
    fields = _object(
        body, {"name", "expires_at", "allowed_models", "allowed_regions", "rate_limit_rpm"}
    )
    if isinstance(fields, ApiError):
        return fields
    name = _text(fields, "name", required=False)
    if isinstance(name, ApiError):
        return name
    expires_at = None
    if fields.get("expires_at") is not None:
        raw = fields["expires_at"]
        try:
            expires_at = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            return invalid_request("'expires_at' must be an ISO 8601 time.", param="expires_at")
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= now:
            return invalid_request("'expires_at' must be in the future.", param="expires_at")
    models = _names(fields, "allowed_models")
    if isinstance(models, ApiError):
        return models
    regions = _names(fields, "allowed_regions")
    if isinstance(regions, ApiError):
        return regions
    rpm = fields.get("rate_limit_rpm")
    if rpm is not None and (
        not isinstance(rpm, int) or isinstance(rpm, bool) or not 0 < rpm <= 10**9
    ):
        return invalid_request(
            "'rate_limit_rpm' must be an integer in [1, 1e9], or null.", param="rate_limit_rpm"
        )
    return KeySpec(
        name=name,
        expires_at=expires_at,
        allowed_models=models,
        allowed_regions=regions,
        rate_limit_rpm=rpm,
    )


def grace_seconds(body: Any) -> int | ApiError:
    fields = _object(body, {"grace_seconds"})
    if isinstance(fields, ApiError):
        return fields
    grace = fields.get("grace_seconds", 3600)
    if not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE_S:
        return invalid_request(
            f"'grace_seconds' must be an integer in [0, {MAX_GRACE_S}].", param="grace_seconds"
        )
    return grace
