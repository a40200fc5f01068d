"""Validation of node registrations and heartbeats, pure: a typed value or Invalid."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from crosslogic.accounts.requests import json_object
from crosslogic.errors import Invalid

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


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if body is None:  # json_object's empty body is for heartbeats only
        raise Invalid("body must be a JSON object")
    return json_object(
        body, allowed, not_object="body must be a JSON object", unknown="unknown field(s): {}"
    )


def _string(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value or len(value) > 253:
        raise Invalid(f"'{name}' must be a non-empty string", param=name)
    return value


def parse_registration(body: Any) -> Registration:
    body = _object(body, _REGISTER_FIELDS)
    node_id = body.get("node_id") or f"node-{secrets.token_hex(6)}"
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise Invalid("'node_id' must match [A-Za-z0-9_.-]{1,128}", param="node_id")
    port = body.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise Invalid("'port' must be an integer in [1, 65535]", param="port")
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
        fields[name] = _string(body, name, default)
    return Registration(node_id=node_id, port=port, **fields)


_INT32 = 2**31 - 1


def parse_heartbeat(body: Any) -> Heartbeat:
    body = _object({} if body is None else body, _HEARTBEAT_FIELDS)
    counts = {}
    for name in ("requests_running", "requests_waiting"):
        value = body.get(name, 0)
        # the columns are Postgres integers: a larger value would fail the UPDATE (a 500)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT32:
            raise Invalid(f"'{name}' must be an integer from 0 to {_INT32}", param=name)
        counts[name] = value
    usage = body.get("kv_cache_usage_perc", 0.0)
    if not isinstance(usage, int | float) or isinstance(usage, bool) or not 0 <= usage <= 1:
        raise Invalid(
            "'kv_cache_usage_perc' must be a number in [0, 1]", param="kv_cache_usage_perc"
        )
    return Heartbeat(kv_cache_usage_perc=float(usage), **counts)
