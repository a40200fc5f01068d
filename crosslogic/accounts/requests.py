"""Validation of operator input, pure: JSON bodies -> typed requests, or Invalid naming the
field (the admin API answers it as a 400, the command line as ``error: ...``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crosslogic.errors import Invalid
from crosslogic.times import parse_time

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_GRACE_S = 30 * 86400


@dataclass(frozen=True)
class KeySpec:
    """A key's settings; None allows every model / region and leaves the rate to the plan."""

    name: str = ""
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    allowed_regions: list[str] | None = None
    rate_limit_rpm: int | None = None
    default_region: str | None = None  # requests naming no region prefer it


def json_object(
    body: Any,
    allowed: set[str],
    *,
    not_object: str = "The body must be a JSON object.",
    unknown: str = "Unknown field(s): {}.",
) -> dict[str, Any]:
    """``body`` (None: ``{}``) if it is an object of ``allowed`` fields; ``unknown`` is
    formatted with the unknown fields' names."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise Invalid(not_object)
    extra = sorted(set(body) - allowed)
    if extra:
        raise Invalid(unknown.format(", ".join(extra)), param=extra[0])
    return body


def _text(
    body: dict[str, Any],
    name: str,
    *,
    pattern: re.Pattern[str] | None = None,
    required: bool = True,
    default: str = "",
) -> str:
    value = body.get(name, None if required else default)
    if not isinstance(value, str) or (required and not value) or len(value) > 200:
        raise Invalid(f"'{name}' must be a non-empty string of at most 200 characters.", param=name)
    if pattern is not None and not pattern.fullmatch(value):
        raise Invalid(f"'{name}' must match {pattern.pattern}.", param=name)
    return value


def tenant_name(body: Any) -> tuple[str, str]:
    fields = json_object(body, {"name", "plan"})
    name = _text(fields, "name")
    return name, _text(fields, "plan", required=False, default="default")


def environment_name(body: Any) -> str:
    return _text(json_object(body, {"name"}), "name", pattern=_NAME)


def status_change(body: Any, allowed: tuple[str, ...]) -> str:
    status = json_object(body, {"status"}).get("status")
    if status not in allowed:
        raise Invalid(f"'status' must be one of {', '.join(allowed)}.", param="status")
    return str(status)


def _names(fields: dict[str, Any], name: str) -> list[str] | None:
    value = fields.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
    ):
        raise Invalid(f"'{name}' must be a non-empty list of names, or null for all.", param=name)
    return sorted(set(value))


def _expiry(fields: dict[str, Any], *, now: datetime) -> datetime | None:
    raw = fields.get("expires_at")
    if raw is None:
        return None
    expires_at = parse_time(raw, param="expires_at")
    if expires_at <= now:
        raise Invalid("'expires_at' must be in the future.", param="expires_at")
    return expires_at


def key_spec(body: Any, *, now: datetime) -> KeySpec:
    fields = json_object(
        body,
        {
            "name",
            "expires_at",
            "allowed_models",
            "allowed_regions",
            "rate_limit_rpm",
            "default_region",
        },
    )
    name = _text(fields, "name", required=False)
    expires_at = _expiry(fields, now=now)
    models = _names(fields, "allowed_models")
    regions = _names(fields, "allowed_regions")
    rpm = fields.get("rate_limit_rpm")
    if rpm is not None and (
        not isinstance(rpm, int) or isinstance(rpm, bool) or not 0 < rpm <= 10**9
    ):
        raise Invalid(
            "'rate_limit_rpm' must be an integer in [1, 1e9], or null.", param="rate_limit_rpm"
        )
    return KeySpec(
        name=name,
        expires_at=expires_at,
        allowed_models=models,
        allowed_regions=regions,
        rate_limit_rpm=rpm,
        default_region=_default_region(fields, allowed=regions),
    )


def _default_region(fields: dict[str, Any], *, allowed: list[str] | None) -> str | None:
    value = fields.get("default_region")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise Invalid(
            "'default_region' must be a region code, or null for none.", param="default_region"
        )
    if allowed is not None and value not in allowed:
        raise Invalid(
            "'default_region' must be one of the key's 'allowed_regions'.", param="default_region"
        )
    return value


def grace_seconds(body: Any) -> int:
    grace = json_object(body, {"grace_seconds"}).get("grace_seconds", 3600)
    if not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE_S:
        raise Invalid(
            f"'grace_seconds' must be an integer in [0, {MAX_GRACE_S}].", param="grace_seconds"
        )
    return grace


def audit_limit(text: str) -> int:
    """``?limit=`` / ``--limit``: an integer, clamped to [1, 1000]."""
    try:
        limit = int(text)
    except ValueError:
        raise Invalid("'limit' must be an integer.", param="limit") from None
    return min(max(limit, 1), 1000)
