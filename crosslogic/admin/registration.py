"""Validation of node registrations and heartbeats, pure."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from crosslogic.openai_errors import ApiError, invalid_request

_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_REGISTER_FIELDS = {"node_id", "model", "address", "port", "provider", "region", "gpu_type"}
_HEARTBEAT_FIELDS = {"requests_running", "requests_waiting", "kv_cache_usage_perc", "status"}


@dataclass(frozen=True)
class Registration:
    node_id: str
    model: str
    address: str
    port: int
    provider: str
    region: str
    gpu_type: str


@dataclass(frozen=True)
class Heartbeat:
    requests_running: int
    requests_waiting: int
    kv_cache_usage_perc: float


def _unknown(body: dict[str, Any], allowed: set[str]) -> ApiError | None:
    extra = sorted(set(body) - allowed)
    if extra:
        return invalid_request(f"unknown field(s): {', '.join(extra)}", param=extra[0])
    return None


def _string(body: dict[str, Any], name: str, default: str | None = None) -> str | ApiError:
    value = body.get(name, default)
    if not isinstance(value, str) or not value or len(value) > 253:
        return invalid_request(f"'{name}' must be a non-empty string", param=name)
    return value


def parse_registration(body: Any) -> Registration | ApiError:
    if not isinstance(body, dict):
        return invalid_request("body must be a JSON object")
    if (error := _unknown(body, _REGISTER_FIELDS)) is not None:
        return error
    node_id = body.get("node_id") or f"node-{secrets.token_hex(6)}"
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        return invalid_request("'node_id' must match [A-Za-z0-9_.-]{1,128}", param="node_id")
    port = body.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        return invalid_request("'port' must be an integer in [1, 65535]", param="port")
    fields = {}
    for name, default in (
        ("model", None),
        ("address", None),
        ("provider", "local"),
        ("region", "local"),
        ("gpu_type", ""),
    ):
        if name == "gpu_type" and body.get(name, "") == "":
            fields[name] = ""
            continue
        value = _string(body, name, default)
        if isinstance(value, ApiError):
            return value
        fields[name] = value
    return Registration(node_id=node_id, port=port, **fields)


_INT32 = 2**31 - 1


def parse_heartbeat(body: Any) -> Heartbeat | ApiError:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return invalid_request("body must be a JSON object")
    if (error := _unknown(body, _HEARTBEAT_FIELDS)) is not None:
        return error
    counts = {}
    for name in ("requests_running", "requests_waiting"):
        value = body.get(name, 0)
        # the columns are Postgres integers: a larger value would fail the UPDATE (a 500)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT32:
            return invalid_request(f"'{name}' must be an integer from 0 to {_INT32}", param=name)
        counts[name] = value
    usage = body.get("kv_cache_usage_perc", 0.0)
    if not isinstance(usage, int | float) or isinstance(usage, bool) or not 0 <= usage <= 1:
        return invalid_request(
            "'kv_cache_usage_perc' must be a number in [0, 1]", param="kv_cache_usage_perc"
        )
    return Heartbeat(kv_cache_usage_perc=float(usage), **counts)
