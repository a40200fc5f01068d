"""The HTTP edge's answers to Envoy's HTTP ext_authz protocol, as response bytes.

An allow is a 200 whose headers Envoy applies by name (envoy/extauthz-http.yaml): the
``x-crosslogic-*`` ones go on the routed request, ``x-envoy-auth-headers-to-remove`` takes
the client's key off it, ``x-ratelimit-*`` go to the client, and each key of the dynamic
metadata comes as a header of its own name, which Envoy turns into metadata (a string; the
reservation as JSON). Anything else is a denial Envoy returns to the client as it is. An
allow's head is built once per decision and cached; only this request's own headers are
added to it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

from crosslogic.contracts import routing
from crosslogic.extauthz.decision import Allow
from crosslogic.extauthz.verdict import (
    Admitted,
    Refused,
    Verdict,
    limits_metadata,
    metadata_of,
    upstream_headers,
)

CACHED_ANSWERS = 50_000  # allow heads kept per process (one per key and model, roughly)
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"  # Envoy's, for the HTTP protocol
_FORBIDDEN = frozenset("\r\n\0")


def header_line(name: str, value: Any) -> bytes:
    """One header line; a value that could split the head is a bug of ours, refused."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if not _FORBIDDEN.isdisjoint(text):
        raise ValueError(f"header {name} would carry a line break: {text!r}")
    return f"{name}: {text}\r\n".encode()


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_OK = status_line(200)
_EMPTY = b"content-length: 0\r\n"
_CLOSE = b"connection: close\r\n"


def allow_head(decision: Allow) -> bytes:
    """Everything of an allow that equal decisions share."""
    lines = [_OK, header_line(REMOVE_HEADER, "authorization")]
    lines += [header_line(k, v) for k, v in upstream_headers(decision)]
    lines += [header_line(k, v) for k, v in metadata_of(decision).items()]
    return b"".join(lines)


def denial(refusal: Refused, *, head_only: bool = False, close: bool = False) -> bytes:
    body = refusal.error.body()
    lines = [status_line(refusal.error.status), b"content-type: application/json\r\n"]
    lines += [header_line(k, v) for k, v in refusal.headers]
    if refusal.attributed is not None:  # metadata only: allowed_client_headers drops them
        lines += [header_line(k, v) for k, v in metadata_of(refusal.attributed).items()]
    lines.append(f"content-length: {len(body)}\r\n".encode())
    if close:
        lines.append(_CLOSE)
    lines.append(b"\r\n")
    if not head_only:  # a response to HEAD has no body, whatever its length says
        lines.append(body)
    return b"".join(lines)


class HttpAnswers:
    """Verdict -> response bytes, with the allow heads cached per decision."""

    def __init__(self) -> None:
        self._heads: dict[Allow, bytes] = {}

    def answer(self, verdict: Verdict, *, head_only: bool = False, close: bool = False) -> bytes:
        if not isinstance(verdict, Admitted):
            return denial(verdict, head_only=head_only, close=close)
        head = self._heads.get(verdict.decision)
        if head is None:
            if len(self._heads) > CACHED_ANSWERS:
                self._heads.clear()
            head = self._heads[verdict.decision] = allow_head(verdict.decision)
        parts = [head]
        if verdict.prefix_hash is not None:
            parts.append(header_line(routing.PREFIX_HASH_HEADER, verdict.prefix_hash))
        if verdict.limits is not None:
            parts += [header_line(k, v) for k, v in verdict.limits.headers()]
            for key, value in limits_metadata(verdict.limits).items():
                parts.append(header_line(key, orjson.dumps(value).decode()))
        parts.append(_EMPTY)
        if close:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        return b"".join(parts)
