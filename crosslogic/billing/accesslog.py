"""One Envoy access-log entry -> one usage record, pure.

The entry's fields are named in envoy/envoy.yaml (json_format). Only requests that ext_authz
attributed to a key and that reached a node are billable; everything else is skipped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

# Envoy's response flag for a client that closed its connection before the response ended
CLIENT_LEFT = "DC"


class MalformedEntry(ValueError):
    """A line that is not an access-log entry of ours (``request_id``: its, if it has one)."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def started_at(text: str) -> datetime:
    """Envoy's ``%Y-%m-%dT%H:%M:%S.%3fZ``, in UTC. (``fromisoformat`` is C: ``strptime``
    cost more per line than parsing the whole JSON entry.)"""
    if len(text) < 20 or text[10] != "T" or text[-1] != "Z":
        raise ValueError(f"not a UTC start time: {text!r}")
    return datetime.fromisoformat(text)


# The three records below are NamedTuples, not frozen dataclasses: one of each is made per
# access-log line, and a frozen dataclass's __init__ (object.__setattr__ per field) cost
# twice as much as a tuple's.


class UsageRecord(NamedTuple):
    request_id: str
    tenant_id: str
    environment_id: str
    api_key_id: str
    model_id: int
    node_id: str | None
    endpoint: str
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    status_code: int
    response_flags: str
    usage_estimated: bool
    started_at: datetime
    duration_ms: int
    source: str = "access_log"  # or "journal": recovered from the admission journal
    model: str = ""  # the catalog name ext_authz attributed (metrics; the row has model_id)

    @property
    def abandoned(self) -> bool:
        """The client closed its connection before the response ended (Envoy's flag DC)."""
        return CLIENT_LEFT in self.response_flags.split(",")


def _count(value: Any) -> int:
    # dynamic metadata numbers arrive as floats; absent ones as null
    if value is None or value == "-":
        return 0
    return max(0, int(float(value)))


class Settlement(NamedTuple):
    """A token reservation to correct: each counter moves by ``delta_tokens`` x its interval."""

    request_id: str
    counters: tuple[tuple[str, float], ...]  # (Redis key, microseconds per token)
    delta_tokens: int


# (prompt, completion, estimated), as the node reported it or the client was sent; None: unknown
Counted = tuple[int, int, bool] | None


def counted_usage(entry: dict[str, Any]) -> Counted:
    """(prompt, completion, estimated): as the node reported it, or, for a stream the client
    left before the usage chunk, the prompt estimate and the tokens the client was sent."""
    if entry.get("prompt_tokens") is not None:
        return _count(entry["prompt_tokens"]), _count(entry.get("completion_tokens")), False
    if entry.get("completion_seen") is not None:
        return _count(entry.get("prompt_estimate")), _count(entry["completion_seen"]), True
    return None


def billed_usage(entry: dict[str, Any], usage: Counted) -> tuple[int, int, bool]:
    """(prompt, completion, estimated) of a request that reached a node: ``counted_usage``, or
    an estimate, never zero tokens for work a node may have done.

    A stream with no usage and no token sent: the prompt estimate (the node stops when Envoy
    resets it). Anything else whose usage is unknown (a client that left before the answer,
    status 0 and flag DC; an answer without usage): the prompt estimate plus the completion
    budget, as for a request in flight when Envoy died: the node may have done, or may still
    be doing, the whole work. ``usage``: ``counted_usage(entry)``.
    """
    if usage is not None:
        return usage
    prompt = _count(entry.get("prompt_estimate"))
    if entry.get("streamed"):
        return prompt, 0, True
    return prompt, max(0, _count(entry.get("token_estimate")) - prompt), True


def settlement(entry: dict[str, Any], usage: Counted) -> Settlement | None:
    """Real usage minus what the rate limiter reserved, when the real usage is known.

    Usage reported: that count. Never reached a node, or the node refused: nothing was
    generated. A stream the client abandoned before the usage chunk: the prompt estimate plus
    the tokens the client was sent. Otherwise unknown: the reservation stands (the
    conservative choice for a limit). ``usage``: ``counted_usage(entry)``.
    """
    # from the rate-limit service, or from ext_authz when it decides (RATELIMIT_AT=authz)
    reservation = entry.get("reservation") or entry.get("authz_reservation")
    if isinstance(reservation, str):  # ext_authz over HTTP: metadata from a header, as JSON
        try:
            reservation = orjson.loads(reservation)
        except ValueError:
            return None
    if not isinstance(reservation, dict) or not reservation.get("counters"):
        return None
    if usage is not None:
        real = usage[0] + usage[1]
    elif not entry.get("upstream_host") or entry.get("status") not in (200, 0):
        real = 0
    else:
        return None
    try:
        counters = tuple([(str(k), float(i)) for k, i in reservation["counters"]])
        reserved = _count(reservation.get("tokens"))
    except (TypeError, ValueError):
        return None
    return Settlement(str(entry["request_id"]), counters, real - reserved)


class Outcome(NamedTuple):
    """What the client saw of one request, billable or not (the request metrics): the model
    ext_authz attributed ("" if none), the path without its query, the status Envoy sent (0:
    the client left first) and the duration."""

    model: str
    path: str
    status: int
    duration_ms: int


class Line(NamedTuple):
    """One access-log line: its usage record (None when not billable), the reservation it
    settles (None when there is nothing to settle), the Envoy process that wrote it (whose
    admission journal entry the line makes redundant), and what the client saw."""

    request_id: str
    boot: str | None
    record: UsageRecord | None
    settlement: Settlement | None
    outcome: Outcome | None = None


def outcome(entry: dict[str, Any]) -> Outcome:
    model = entry.get("model")
    try:
        status = int(entry.get("status") or 0)
    except (TypeError, ValueError):
        status = 0
    return Outcome(
        model=model if isinstance(model, str) and model != "-" else "",
        path=str(entry.get("path") or "").split("?", 1)[0],
        status=status,
        duration_ms=_count(entry.get("duration_ms")),
    )


def parse_line(line: bytes) -> Line:
    try:
        entry = orjson.loads(line)
    except ValueError as exc:  # orjson.JSONDecodeError is one
        raise MalformedEntry(f"not JSON: {line[:80]!r}") from exc
    if not isinstance(entry, dict) or not entry.get("request_id"):
        raise MalformedEntry(f"no request_id: {line[:80]!r}")
    boot = entry.get("boot")
    usage = counted_usage(entry)  # both below need it
    return Line(
        request_id=str(entry["request_id"]),
        boot=boot if isinstance(boot, str) and boot not in ("", "-") else None,
        record=usage_record(entry, usage),
        settlement=settlement(entry, usage),
        outcome=outcome(entry),
    )


def parse(line: bytes) -> tuple[UsageRecord | None, Settlement | None]:
    """The usage record of a billable entry (None for a non-billable one), and the token
    reservation it settles (None if there is nothing to settle)."""
    parsed = parse_line(line)
    return parsed.record, parsed.settlement


def end_time(line: bytes) -> datetime | None:
    """When the request of a line ended (its start plus its duration), if readable."""
    try:
        entry = orjson.loads(line)
        duration = timedelta(milliseconds=_count(entry["duration_ms"]))
        return started_at(entry["start_time"]) + duration
    except (ValueError, KeyError, TypeError):
        return None


def usage_record(entry: dict[str, Any], usage: Counted) -> UsageRecord | None:
    """The row of a billable entry; ``usage``: ``counted_usage(entry)``."""
    get = entry.get
    if not get("api_key_id") or get("model_id") is None:
        return None  # not an inference request (GET /v1/models)
    if not get("upstream_host"):
        return None  # refused before any node (rate limit, no healthy node)
    if get("status") in (0, 200):
        prompt, completion, estimated = billed_usage(entry, usage)
    else:
        # an error answer (the node refused, or Envoy gave up on it): nothing generated
        prompt, completion, estimated = usage or (0, 0, False)
    try:
        return UsageRecord(
            request_id=str(entry["request_id"]),
            tenant_id=str(entry["tenant_id"]),
            environment_id=str(entry["environment_id"]),
            api_key_id=str(entry["api_key_id"]),
            model_id=int(float(entry["model_id"])),
            node_id=get("upstream_node") or get("upstream_host"),
            endpoint=str(get("path") or "").split("?", 1)[0],
            streamed=bool(get("streamed")),
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_estimated=estimated,
            status_code=int(get("status") or 0),
            response_flags=str(get("flags") or "-"),
            started_at=started_at(entry["start_time"]),
            duration_ms=_count(get("duration_ms")),
            model=str(get("model") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEntry(
            f"bad field in {get('request_id')}: {exc}", request_id=str(get("request_id"))
        ) from exc
