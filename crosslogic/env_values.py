"""Parsing environment variables into settings values: each parser names the variable in
its error, so that an operator sees which one to fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict


class SettingsError(ValueError):
    """An environment variable has a value we cannot use; the message names the variable."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_duration(name: str, raw: str) -> float:
    """'500ms', '30s', '5m', '1h' or a bare number of seconds -> seconds."""
    match = _DURATION.match(raw.strip())
    if not match or float(match.group(1)) <= 0:
        raise SettingsError(
            f"{name}={raw!r} is not a positive duration (examples: 500ms, 30s, 5m, 1h)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def int_value(
    env: Mapping[str, str], name: str, default: int, *, low: int = 0, high: int = 65535
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is out of range [{low}, {high}]")
    return value


def duration_value(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return default if raw is None or raw == "" else parse_duration(name, raw)


def choice_value(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def optional(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    return raw or None


def path_value(env: Mapping[str, str], name: str) -> Path | None:
    raw = optional(env, name)
    return Path(raw) if raw else None


URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
# a gateway's name goes into Redis keys and file names: plain lower-case words
GATEWAY_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$")
NODES = re.compile(r"^(|[^\s,:]+:[0-9]{1,5}(,[^\s,:]+:[0-9]{1,5})*)$")  # host:port,...


def matching_value(
    env: Mapping[str, str], name: str, default: str, pattern: re.Pattern[str]
) -> str:
    value = env.get(name, "").strip() or default
    if not pattern.match(value):
        raise SettingsError(f"{name}={value!r} must match {pattern.pattern}")
    return value


class TlsValues(TypedDict):
    listener_tls: str
    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_ca_dir: Path | None
    node_ca_file: Path | None
    node_client_cert_lifetime: float


def tls_values(env: Mapping[str, str], *, lifetime: float) -> TlsValues:
    """The TLS settings (``Settings.listener_tls`` ...), by field name."""
    values: TlsValues = {
        "listener_tls": choice_value(env, "LISTENER_TLS", "off", ("off", "on")),
        "tls_cert_file": path_value(env, "TLS_CERT_FILE"),
        "tls_key_file": path_value(env, "TLS_KEY_FILE"),
        "tls_ca_dir": path_value(env, "TLS_CA_DIR"),
        "node_ca_file": path_value(env, "NODE_CA_FILE"),
        "node_client_cert_lifetime": duration_value(env, "NODE_CLIENT_CERT_LIFETIME", lifetime),
    }
    if (values["tls_cert_file"] is None) != (values["tls_key_file"] is None):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
    return values
