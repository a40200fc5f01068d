"""The request body as every stage must read it, pure: bytes -> JSON object or a 400.

ext_authz, the usage Lua filter and the node each parse the same bytes. They agree only on
plain UTF-8 JSON: Python's ``json.loads(bytes)`` also accepts UTF-16/32 and a BOM, which the
Lua filter (appending the usage option as raw UTF-8) and billing's estimate then misread.
So the one accepted form is UTF-8 without a BOM, no NaN/Infinity, nesting within
``MAX_DEPTH``, and an object at the top. The numbers a decision uses are bounded here too,
so that no estimate can overflow the counters' arithmetic (gcra.lua works in doubles).
"""

from __future__ import annotations

import json

import orjson

from crosslogic.openai_errors import ApiError, invalid_request
from crosslogic.ratelimit.gcra import MAX_COST

MAX_DEPTH = 64  # far beyond any real request (tool schemas nest a handful of levels)
# Largest completion budget accepted (max_tokens / max_completion_tokens): above any model's
# output window today; the bound is what keeps the token estimate finite.
MAX_COMPLETION_TOKENS = 1_048_576
MAX_CHOICES = 128  # OpenAI's own bound on n
# No estimate exceeds what a rate limit accepts as one request's cost; a 1 MiB prompt / 4
# + MAX_COMPLETION_TOKENS * MAX_CHOICES stays below it anyway.
MAX_TOKEN_ESTIMATE = MAX_COST

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
INVALID_JSON = invalid_request("The request body is not valid JSON.", code="invalid_json")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python-only


def _too_deep(payload: object) -> bool:
    """Depth of nested arrays/objects over MAX_DEPTH; iterative (a recursive walk is what
    a deep body is meant to break)."""
    stack: list[tuple[object, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_object(body: bytes) -> dict[str, object] | ApiError:
    """The body as a JSON object, or the 400 every client gets for anything else."""
    if body.startswith(_BOMS):
        return invalid_request(
            "The request body must be UTF-8 JSON without a byte order mark.", code="invalid_json"
        )
    try:
        # orjson first: several times faster, and it accepts a subset of what json does
        # (UTF-8 only, no NaN/Infinity, no lone surrogates, nesting within 1024); whatever it
        # refuses is read by json as before, for the same answer and the same error
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = _parsed_by_json(body)
        if isinstance(payload, ApiError):
            return payload
    if not isinstance(payload, dict):
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
    # cheap first: a body with few brackets cannot nest deeply (the usual request)
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and _too_deep(payload):
        return invalid_request(
            f"The request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json"
        )
    return payload


def _parsed_by_json(body: bytes) -> object | ApiError:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return invalid_request("The request body must be UTF-8 encoded JSON.", code="invalid_json")
    try:
        payload: object = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        # ValueError covers integers over Python's digit limit; RecursionError, nesting
        # deeper than the C parser's stack
        return INVALID_JSON
    return payload


def bounded_int(
    payload: dict[str, object], name: str, *, low: int, high: int
) -> int | ApiError | None:
    """An optional integer parameter within [low, high]: None when absent or null."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return invalid_request(
            f"'{name}' must be an integer from {low} to {high}.",
            code="invalid_value",
            param=name,
        )
    return value
