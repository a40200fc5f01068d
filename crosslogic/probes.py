"""Waiting for a process to be ready: polled probes, with the supervisor's check in between
so that a child that keeps crashing ends the wait at once."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def wait_until(
    what: str,
    probe: Callable[[], bool],
    *,
    timeout: float = 30.0,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``probe`` until it is true; ``check`` (raising) runs between tries."""
    deadline = time.monotonic() + timeout
    while not probe():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str, *, headers: dict[str, str] | None = None, cafile: Path | None = None) -> bool:
    """``url`` answers 200; over https trusting ``cafile`` (None: our own listener with a
    certificate from elsewhere, whose trust is not this probe's question)."""
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=cafile)
        if cafile is None:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=1, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def healthy_nodes(envoy_admin_url: str, model: str) -> int:
    """How many of ``model``'s nodes Envoy counts as healthy; -1 if Envoy does not answer."""
    stat = f"cluster.model_{model}.membership_healthy"
    url = f"{envoy_admin_url}/stats?format=json&filter=^{stat}$"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            stats = json.load(response).get("stats", [])
    except (urllib.error.URLError, OSError, ValueError):
        return -1
    return int(stats[0]["value"]) if stats else 0
