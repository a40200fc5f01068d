"""Validation of node registrations, heartbeats and registration-token requests, pure: a
typed value or Invalid."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from crosslogic.accounts.requests import json_object
from crosslogic.errors import Invalid

_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_REGISTER_FIELDS = {
    "node_id",
    "model",
    "address",
    "port",
    "provider",
    "region",
    "zone",
    "gpu_type",
    "gpu_count",
    "capacity",
    "spot",
    "transport",
}
_HEARTBEAT_FIELDS = {"requests_running", "requests_waiting", "kv_cache_usage_perc", "status"}
_TOKEN_FIELDS = {"name", "provider", "region"}
_INT32 = 2**31 - 1
DEFAULT_CAPACITY = 256  # vLLM's default max_num_seqs
# how Envoy reaches the node: HTTP, HTTPS (its certificate checked), HTTPS with Envoy's client
# certificate (crosslogic.tls.client)
TRANSPORTS = ("plain", "tls", "mtls")


@dataclass(frozen=True)
class Registration:
    """What a node says of itself: where it serves which model, on what hardware."""

    node_id: str
    model: str
    address: str
    port: int
    provider: str
    region: str
    gpu_type: str
    zone: str = ""
    gpu_count: int = 1
    capacity: int = DEFAULT_CAPACITY  # max concurrent sequences (vLLM's max_num_seqs)
    spot: bool = False
    transport: str = "plain"


@dataclass(frozen=True)
class Heartbeat:
    """A node's load in vLLM's terms."""

    requests_running: int
    requests_waiting: int
    kv_cache_usage_perc: float


@dataclass(frozen=True)
class TokenSpec:
    """A registration token to create: its name and optional scope (None: any)."""

    name: str
    provider: str | None = None
    region: str | None = None


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


def _integer(body: dict[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"'{name}' must be an integer from {low} to {high}", param=name)
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
    ):
        fields[name] = _string(body, name, default)
    for name, longest in (("gpu_type", 253), ("zone", 100)):
        value = body.get(name, "")
        if not isinstance(value, str) or len(value) > longest:
            raise Invalid(f"'{name}' must be a string of at most {longest} characters", param=name)
        fields[name] = value
    spot = body.get("spot", False)
    if not isinstance(spot, bool):
        raise Invalid("'spot' must be true or false", param="spot")
    transport = body.get("transport", "plain")
    if transport not in TRANSPORTS:
        raise Invalid(f"'transport' must be one of {', '.join(TRANSPORTS)}", param="transport")
    return Registration(
        transport=transport,
        node_id=node_id,
        port=port,
        gpu_count=_integer(body, "gpu_count", 1, low=0, high=1024),
        capacity=_integer(body, "capacity", DEFAULT_CAPACITY, low=1, high=1_000_000),
        spot=spot,
        **fields,
    )


def parse_heartbeat(body: Any) -> Heartbeat:
    body = _object({} if body is None else body, _HEARTBEAT_FIELDS)
    # the columns are Postgres integers: a larger value would fail the UPDATE (a 500)
    counts = {
        name: _integer(body, name, 0, low=0, high=_INT32)
        for name in ("requests_running", "requests_waiting")
    }
    usage = body.get("kv_cache_usage_perc", 0.0)
    if not isinstance(usage, int | float) or isinstance(usage, bool) or not 0 <= usage <= 1:
        raise Invalid(
            "'kv_cache_usage_perc' must be a number in [0, 1]", param="kv_cache_usage_perc"
        )
    return Heartbeat(kv_cache_usage_perc=float(usage), **counts)


def parse_token_spec(body: Any) -> TokenSpec:
    body = _object(body, _TOKEN_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise Invalid("'name' must be a string of 1 to 200 characters", param="name")
    scope: dict[str, str | None] = {}
    for field in ("provider", "region"):
        value = body.get(field)
        if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 253):
            raise Invalid(f"'{field}' must be a non-empty string or null", param=field)
        scope[field] = value
    return TokenSpec(name=name, **scope)
